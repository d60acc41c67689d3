//! A linearizability checker for any sequential model: Wing and Gong's search with Lowe's
//! memoization (the algorithm porcupine and Knossos build on). Operations whose outcome is unknown
//! never return, so they may take effect at any point after their invocation — or never, which is
//! the same as taking effect after everything else.
//!
//! The search walks the history's invocations and returns in time order. At an invocation it tries
//! to linearize that operation now (the model accepts its response from the current state); at a
//! return whose operation is not linearized yet it backtracks. A (linearized set, state) pair seen
//! before is never searched twice, which keeps histories with many concurrent operations tractable.

use std::collections::HashSet;
use std::hash::Hash;

/// A sequential specification.
pub trait Model: Clone + Eq + Hash {
    type Op;
    /// The state after `op`, or `None` if the model cannot produce `op`'s response from here.
    fn step(&self, op: &Self::Op) -> Option<Self>;
}

/// One operation of a history: invoked at `invoked`, returned at `returned` (`None`: never).
#[derive(Debug, Clone)]
pub struct Timed<O> {
    pub invoked: u64,
    pub returned: Option<u64>,
    pub op: O,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable {
        /// The operations in an order that explains the history (indexes into it).
        order: Vec<usize>,
    },
    NotLinearizable {
        /// The longest prefix of a linearization the search found.
        longest: Vec<usize>,
        /// The operations that could not come next after `longest`: the ones that returned before
        /// some other operation had to be placed.
        stuck: Vec<usize>,
    },
    /// The search visited more than the budget of states without an answer.
    GaveUp { states: usize },
}

#[derive(Clone, Copy)]
struct Node {
    op: usize,
    is_call: bool,
    /// For an invocation, the node of its return.
    matching: usize,
    prev: usize,
    next: usize,
}

const HEAD: usize = 0;
const NONE: usize = usize::MAX;

/// The history as a doubly linked list of invocations and returns in time order, behind a head.
struct Events {
    nodes: Vec<Node>,
}

impl Events {
    fn new<O>(history: &[Timed<O>]) -> Events {
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(history.len() * 2);
        for (index, timed) in history.iter().enumerate() {
            events.push((timed.invoked, true, index));
            events.push((timed.returned.unwrap_or(u64::MAX), false, index));
        }
        // At equal times invocations come first: the two operations then count as concurrent,
        // which never rejects a linearizable history.
        events.sort_by_key(|&(time, is_call, index)| (time, !is_call, index));
        let mut nodes = vec![Node {
            op: NONE,
            is_call: false,
            matching: NONE,
            prev: NONE,
            next: NONE,
        }];
        let mut return_node = vec![NONE; history.len()];
        for (position, &(_, is_call, op)) in events.iter().enumerate() {
            let id = position + 1;
            if !is_call {
                return_node[op] = id;
            }
            nodes.push(Node {
                op,
                is_call,
                matching: NONE,
                prev: id - 1,
                next: if position + 1 < events.len() { id + 1 } else { NONE },
            });
        }
        nodes[HEAD].next = if events.is_empty() { NONE } else { 1 };
        for node in nodes.iter_mut().skip(1) {
            if node.is_call {
                node.matching = return_node[node.op];
            }
        }
        Events { nodes }
    }

    fn unlink(&mut self, id: usize) {
        let Node { prev, next, .. } = self.nodes[id];
        self.nodes[prev].next = next;
        if next != NONE {
            self.nodes[next].prev = prev;
        }
    }

    fn relink(&mut self, id: usize) {
        let Node { prev, next, .. } = self.nodes[id];
        self.nodes[prev].next = id;
        if next != NONE {
            self.nodes[next].prev = id;
        }
    }

    /// Takes an invocation and its return out of the list.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.nodes[call].matching);
    }

    /// Puts them back, in the reverse order they were taken out.
    fn unlift(&mut self, call: usize) {
        self.relink(self.nodes[call].matching);
        self.relink(call);
    }
}

/// Checks `history` against `initial`, visiting at most `budget` states.
pub fn check<M: Model>(initial: M, history: &[Timed<M::Op>], budget: usize) -> Verdict {
    let mut events = Events::new(history);
    let mut linearized = vec![0u64; history.len().div_ceil(64)];
    let mut seen: HashSet<(Vec<u64>, M)> = HashSet::new();
    let mut stack: Vec<(usize, M)> = Vec::new();
    let mut state = initial;
    let mut longest: Vec<usize> = Vec::new();
    let mut stuck: Vec<usize> = Vec::new();
    let mut visited = 0usize;
    let mut entry = events.nodes[HEAD].next;
    while events.nodes[HEAD].next != NONE {
        let node = events.nodes[entry];
        if node.is_call {
            if let Some(next) = state.step(&history[node.op].op) {
                let mut with = linearized.clone();
                with[node.op / 64] |= 1 << (node.op % 64);
                if seen.insert((with.clone(), next.clone())) {
                    visited += 1;
                    if visited > budget {
                        return Verdict::GaveUp { states: visited };
                    }
                    stack.push((entry, std::mem::replace(&mut state, next)));
                    linearized = with;
                    events.lift(entry);
                    entry = events.nodes[HEAD].next;
                    continue;
                }
            }
            entry = node.next;
        } else {
            // A return of an operation not placed yet: this prefix cannot be extended.
            if stack.len() >= longest.len() {
                longest = stack.iter().map(|&(call, _)| events.nodes[call].op).collect();
                stuck = pending_before(&events, entry);
            }
            let Some((call, previous)) = stack.pop() else {
                return Verdict::NotLinearizable { longest, stuck };
            };
            let op = events.nodes[call].op;
            linearized[op / 64] &= !(1 << (op % 64));
            state = previous;
            events.unlift(call);
            entry = events.nodes[call].next;
        }
    }
    Verdict::Linearizable {
        order: stack.iter().map(|&(call, _)| events.nodes[call].op).collect(),
    }
}

/// The operations whose invocations are still in the list before `until` (a return): one of them
/// had to come next, and none could.
fn pending_before(events: &Events, until: usize) -> Vec<usize> {
    let mut ops = Vec::new();
    let mut id = events.nodes[HEAD].next;
    while id != NONE && id != until {
        if events.nodes[id].is_call {
            ops.push(events.nodes[id].op);
        }
        id = events.nodes[id].next;
    }
    ops.push(events.nodes[until].op);
    ops.sort_unstable();
    ops.dedup();
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A register: writes, and reads that return a value.
    #[derive(Debug, Clone, PartialEq, Eq, Hash)]
    struct Register(u32);

    #[derive(Debug, Clone)]
    enum Op {
        Write(u32),
        Read(u32),
    }

    impl Model for Register {
        type Op = Op;
        fn step(&self, op: &Op) -> Option<Register> {
            match *op {
                Op::Write(value) => Some(Register(value)),
                Op::Read(value) => (value == self.0).then_some(self.clone()),
            }
        }
    }

    fn timed(invoked: u64, returned: Option<u64>, op: Op) -> Timed<Op> {
        Timed {
            invoked,
            returned,
            op,
        }
    }

    #[test]
    fn a_read_concurrent_with_a_write_may_see_either_value() {
        for seen in [0, 1] {
            let history = [
                timed(0, Some(10), Op::Write(1)),
                timed(5, Some(15), Op::Read(seen)),
            ];
            assert!(matches!(
                check(Register(0), &history, 1000),
                Verdict::Linearizable { .. }
            ));
        }
    }

    #[test]
    fn a_read_after_a_write_returned_must_see_it() {
        let history = [timed(0, Some(10), Op::Write(1)), timed(11, Some(15), Op::Read(0))];
        let verdict = check(Register(0), &history, 1000);
        assert_eq!(
            verdict,
            Verdict::NotLinearizable {
                longest: vec![0],
                stuck: vec![1]
            }
        );
    }

    #[test]
    fn reads_may_not_go_back_in_time() {
        // Two reads in sequence, both concurrent with the write: new then old is impossible.
        let history = [
            timed(0, Some(100), Op::Write(1)),
            timed(10, Some(20), Op::Read(1)),
            timed(30, Some(40), Op::Read(0)),
        ];
        assert!(matches!(
            check(Register(0), &history, 1000),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn an_unknown_write_may_take_effect_late_or_never() {
        let late = [
            timed(0, None, Op::Write(1)),
            timed(10, Some(20), Op::Read(0)),
            timed(30, Some(40), Op::Read(1)),
        ];
        assert!(matches!(
            check(Register(0), &late, 1000),
            Verdict::Linearizable { .. }
        ));
        let never = [timed(0, None, Op::Write(1)), timed(10, Some(20), Op::Read(0))];
        assert!(matches!(
            check(Register(0), &never, 1000),
            Verdict::Linearizable { .. }
        ));
        let before_invoked = [timed(0, Some(5), Op::Read(1)), timed(10, None, Op::Write(1))];
        assert!(matches!(
            check(Register(0), &before_invoked, 1000),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn the_budget_bounds_the_search() {
        // Many concurrent writes and a read no order explains: the search gives up.
        let mut history: Vec<Timed<Op>> = (0..20).map(|v| timed(0, Some(100), Op::Write(v))).collect();
        history.push(timed(200, Some(210), Op::Read(99)));
        assert!(matches!(check(Register(0), &history, 50), Verdict::GaveUp { .. }));
    }
}
