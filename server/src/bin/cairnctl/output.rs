//! How results are written: etcdctl's simple lines, its JSON (Go's encoding of the etcd messages:
//! snake_case or camelCase names as etcd's, zero values left out, bytes in base64) and its tables.

use std::io::Write;
use std::time::Duration;

use base64::Engine;
use etcd_client::{KeyValue, Member, ResponseHeader};
use serde_json::{Map, Value, json};

/// Writes raw bytes (keys and values need not be UTF-8) followed by a newline.
pub fn line(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(bytes);
    let _ = out.write_all(b"\n");
}

pub fn print_json(value: &Value) {
    println!("{value}");
}

/// Inserts `value` under `name` unless it is the zero value, as Go's `omitempty` does.
fn put_nonzero(object: &mut Map<String, Value>, name: &str, value: Value) {
    let zero = match &value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(_) => false,
    };
    if !zero {
        object.insert(name.to_owned(), value);
    }
}

pub fn object(fields: &[(&str, Value)]) -> Value {
    let mut object = Map::new();
    for (name, value) in fields {
        put_nonzero(&mut object, name, value.clone());
    }
    Value::Object(object)
}

pub fn bytes(data: &[u8]) -> Value {
    Value::String(base64::engine::general_purpose::STANDARD.encode(data))
}

pub fn header(header: Option<&ResponseHeader>) -> Value {
    header.map_or(Value::Null, |h| object(&header_fields(h)))
}

/// The header's fields, for the responses that etcdctl prints with the header flattened in.
pub fn header_fields(h: &ResponseHeader) -> Vec<(&'static str, Value)> {
    vec![
        ("cluster_id", json!(h.cluster_id())),
        ("member_id", json!(h.member_id())),
        ("revision", json!(h.revision())),
        ("raft_term", json!(h.raft_term())),
    ]
}

pub fn key_value(kv: &KeyValue) -> Value {
    object(&[
        ("key", bytes(kv.key())),
        ("create_revision", json!(kv.create_revision())),
        ("mod_revision", json!(kv.mod_revision())),
        ("version", json!(kv.version())),
        ("value", bytes(kv.value())),
        ("lease", json!(kv.lease())),
    ])
}

pub fn key_values(kvs: &[KeyValue]) -> Value {
    Value::Array(kvs.iter().map(key_value).collect())
}

pub fn member(m: &Member) -> Value {
    object(&[
        ("ID", json!(m.id())),
        ("name", json!(m.name())),
        ("peerURLs", json!(m.peer_urls())),
        ("clientURLs", json!(m.client_urls())),
        ("isLearner", json!(m.is_learner())),
    ])
}

pub fn members(members: &[Member]) -> Value {
    Value::Array(members.iter().map(member).collect())
}

/// etcdctl's simple line for a member: `id, started, name, peer URLs, client URLs, is learner`.
pub fn member_row(m: &Member) -> Vec<String> {
    let status = if m.name().is_empty() {
        "unstarted"
    } else {
        "started"
    };
    vec![
        format!("{:x}", m.id()),
        status.to_owned(),
        m.name().to_owned(),
        m.peer_urls().join(","),
        m.client_urls().join(","),
        m.is_learner().to_string(),
    ]
}

/// A table like etcdctl's: headers centred, cells right-aligned, `+---+` rules.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([h.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let rule = {
        let parts: Vec<String> = widths.iter().map(|w| "-".repeat(w + 2)).collect();
        format!("+{}+\n", parts.join("+"))
    };
    let mut out = rule.clone();
    let cells: Vec<String> = headers
        .iter()
        .zip(&widths)
        .map(|(h, w)| {
            let pad = w - h.chars().count();
            format!(" {}{}{} ", " ".repeat(pad / 2), h, " ".repeat(pad - pad / 2))
        })
        .collect();
    out.push_str(&format!("|{}|\n", cells.join("|")));
    out.push_str(&rule);
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!(" {cell:>w$} "))
            .collect();
        out.push_str(&format!("|{}|\n", cells.join("|")));
    }
    out.push_str(&rule);
    out
}

/// Sizes as etcdctl prints them (go-humanize's SI bytes): `187 B`, `20 kB`, `1.2 MB`.
pub fn human_bytes(size: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if size < 10 {
        return format!("{size} B");
    }
    let exponent = ((size as f64).ln() / 1000f64.ln()).floor() as usize;
    let value = ((size as f64) / 1000f64.powi(exponent as i32) * 10.0 + 0.5).floor() / 10.0;
    if value < 10.0 {
        format!("{value:.1} {}", UNITS[exponent])
    } else {
        format!("{value:.0} {}", UNITS[exponent])
    }
}

/// Durations as Go prints them (`1.973762ms`, `2.5s`), which is what etcdctl users read.
pub fn go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    let trimmed = |value: f64, unit: &str| {
        let text = format!("{value:.9}");
        let text = text.trim_end_matches('0').trim_end_matches('.');
        format!("{text}{unit}")
    };
    match nanos {
        0 => "0s".to_owned(),
        n if n < 1_000 => format!("{n}ns"),
        n if n < 1_000_000 => trimmed(n as f64 / 1e3, "µs"),
        n if n < 1_000_000_000 => trimmed(n as f64 / 1e6, "ms"),
        _ => trimmed(d.as_secs_f64(), "s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_read_as_etcdctl_prints_them() {
        assert_eq!(human_bytes(7), "7 B");
        assert_eq!(human_bytes(187), "187 B");
        assert_eq!(human_bytes(20_480), "20 kB");
        assert_eq!(human_bytes(1_234_567), "1.2 MB");
        assert_eq!(go_duration(Duration::from_nanos(1_973_762)), "1.973762ms");
        assert_eq!(go_duration(Duration::from_millis(2500)), "2.5s");
        assert_eq!(go_duration(Duration::from_micros(12)), "12µs");
    }

    #[test]
    fn tables_centre_headers_and_right_align_cells() {
        let text = table(
            &["ID", "IS LEARNER"],
            &[vec!["8e9e05c52164694d".into(), "false".into()]],
        );
        assert_eq!(
            text,
            "+------------------+------------+\n\
             |        ID        | IS LEARNER |\n\
             +------------------+------------+\n\
             | 8e9e05c52164694d |      false |\n\
             +------------------+------------+\n"
        );
    }

    #[test]
    fn zero_values_are_left_out_like_go_omitempty() {
        let value = object(&[
            ("a", json!(0)),
            ("b", json!("")),
            ("c", json!(3)),
            ("d", json!(false)),
        ]);
        assert_eq!(value.to_string(), r#"{"c":3}"#);
    }
}
