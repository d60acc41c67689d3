//! The text form of a transaction that `txn` reads from stdin, as etcdctl reads it: compares, then
//! success requests, then failure requests, each section ended by an empty line.
//!
//! ```text
//! mod("key1") > "0"
//!
//! put key1 "overwrote-key1"
//!
//! put key1 "created-key1"
//! put key2 "some extra key"
//! ```

use std::io::{BufRead, Write};

use clap::Parser;
use etcd_client::{Compare, CompareOp};

use crate::cli::TxnRequest;

pub const PROMPTS: [&str; 3] = [
    "compares:",
    "success requests (get, put, del):",
    "failure requests (get, put, del):",
];

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TxnParseError {
    #[error("malformed comparison: {line} ({reason})")]
    Compare { line: String, reason: String },
    #[error("invalid txn request {line:?}: {reason}")]
    Request { line: String, reason: String },
    #[error("cannot read the transaction from stdin: {0}")]
    Read(String),
}

/// The three sections as lines; with `prompt`, each section's prompt is written before it is read.
pub fn read_sections(
    input: &mut dyn BufRead,
    mut prompt: Option<&mut dyn Write>,
) -> Result<[Vec<String>; 3], TxnParseError> {
    let mut sections: [Vec<String>; 3] = Default::default();
    for (section, title) in sections.iter_mut().zip(PROMPTS) {
        if let Some(out) = prompt.as_deref_mut() {
            let _ = writeln!(out, "{title}");
            let _ = out.flush();
        }
        loop {
            let mut line = String::new();
            let read = input
                .read_line(&mut line)
                .map_err(|e| TxnParseError::Read(e.to_string()))?;
            let line = line.trim_end_matches(['\n', '\r']);
            if read == 0 || line.trim().is_empty() {
                break;
            }
            section.push(line.to_owned());
        }
    }
    Ok(sections)
}

/// Splits a request line into words; double-quoted words may hold spaces and Go escapes.
pub fn words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' {
            words.push(quoted(&mut chars)?);
        } else {
            let mut word = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                word.push(c);
                chars.next();
            }
            words.push(word);
        }
    }
    Ok(words)
}

/// Reads one double-quoted string (the opening quote is next) with `\"`, `\\`, `\n`, `\t` escapes.
fn quoted(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<String, String> {
    chars.next();
    let mut text = String::new();
    loop {
        match chars.next() {
            None => return Err("unterminated quoted string".into()),
            Some('"') => return Ok(text),
            Some('\\') => match chars.next() {
                Some('n') => text.push('\n'),
                Some('t') => text.push('\t'),
                Some('r') => text.push('\r'),
                Some(c @ ('"' | '\\')) => text.push(c),
                Some(c) => return Err(format!("unknown escape \\{c}")),
                None => return Err("unterminated quoted string".into()),
            },
            Some(c) => text.push(c),
        }
    }
}

/// Parses `target("key") op "value"`; targets ver/version, c/create, m/mod, val/value, lease (hex).
pub fn parse_compare(line: &str) -> Result<Compare, TxnParseError> {
    let fail = |reason: &str| TxnParseError::Compare {
        line: line.to_owned(),
        reason: reason.to_owned(),
    };
    let (target, rest) = line
        .trim()
        .split_once('(')
        .ok_or_else(|| fail("expected target(\"key\")"))?;
    let mut chars = rest.chars().peekable();
    if chars.peek() != Some(&'"') {
        return Err(fail("the key must be double-quoted"));
    }
    let key = quoted(&mut chars).map_err(|e| fail(&e))?;
    let rest: String = chars.collect();
    let rest = rest
        .strip_prefix(')')
        .ok_or_else(|| fail("expected ) after the key"))?;
    let parts = words(rest).map_err(|e| fail(&e))?;
    let [op, value] = parts.as_slice() else {
        return Err(fail("expected an operator and a quoted value"));
    };
    let op = match op.as_str() {
        "=" | "==" => CompareOp::Equal,
        "!=" => CompareOp::NotEqual,
        "<" => CompareOp::Less,
        ">" => CompareOp::Greater,
        other => return Err(fail(&format!("unknown operator {other:?}; use =, !=, < or >"))),
    };
    let number = |radix: u32| {
        i64::from_str_radix(value, radix).map_err(|_| fail(&format!("{value:?} is not a number")))
    };
    Ok(match target.trim() {
        "ver" | "version" => Compare::version(key, op, number(10)?),
        "c" | "create" => Compare::create_revision(key, op, number(10)?),
        "m" | "mod" => Compare::mod_revision(key, op, number(10)?),
        "val" | "value" => Compare::value(key, op, value.as_bytes()),
        "lease" => Compare::lease(key, op, number(16)?),
        other => return Err(fail(&format!("unknown target {other:?}"))),
    })
}

/// Parses `put k v`, `get k [flags]`, `del k [flags]` with the verbs' own flags.
pub fn parse_request(line: &str) -> Result<TxnRequest, TxnParseError> {
    let fail = |reason: String| TxnParseError::Request {
        line: line.to_owned(),
        reason,
    };
    let words = words(line).map_err(fail)?;
    let request = TxnRequest::try_parse_from(&words).map_err(|e| {
        let text = e.to_string();
        fail(
            text.lines()
                .next()
                .unwrap_or_default()
                .trim_start_matches("error: ")
                .to_owned(),
        )
    })?;
    if let TxnRequest::Put(put) = &request
        && put.value.is_none()
        && !put.ignore_value
    {
        return Err(fail("put in a transaction needs a value".into()));
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_end_at_empty_lines_and_prompts_come_first() {
        let text = "mod(\"k\") > \"0\"\n\nput k v\nget k\n\ndel k\n";
        let mut prompts = Vec::new();
        let sections = read_sections(&mut text.as_bytes(), Some(&mut prompts)).unwrap();
        assert_eq!(sections[0], vec!["mod(\"k\") > \"0\""]);
        assert_eq!(sections[1], vec!["put k v", "get k"]);
        assert_eq!(sections[2], vec!["del k"]);
        assert_eq!(String::from_utf8(prompts).unwrap(), PROMPTS.join("\n") + "\n");
    }

    #[test]
    fn compares_read_like_etcdctl() {
        for line in [
            r#"mod("key1") > "0""#,
            r#"value("k") = "a b""#,
            r#"ver("k") != "3""#,
            r#"c("k") < "10""#,
            r#"lease("k") = "694d77aa9e38260f""#,
        ] {
            parse_compare(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        }
        let error = parse_compare(r#"mod("k") > "x""#).unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"malformed comparison: mod("k") > "x" ("x" is not a number)"#
        );
        let error = parse_compare(r#"size("k") = "1""#).unwrap_err();
        assert!(error.to_string().contains("unknown target \"size\""), "{error}");
        let error = parse_compare(r#"value(k) = "1""#).unwrap_err();
        assert!(error.to_string().contains("double-quoted"), "{error}");
    }

    #[test]
    fn requests_take_the_verbs_flags_and_quoted_values() {
        match parse_request(r#"put key1 "a value with \"quotes\"""#).unwrap() {
            TxnRequest::Put(put) => assert_eq!(put.value.as_deref(), Some("a value with \"quotes\"")),
            other => panic!("{other:?}"),
        }
        match parse_request("get pre --prefix --limit 2").unwrap() {
            TxnRequest::Get(get) => assert!(get.keys.prefix && get.limit == 2),
            other => panic!("{other:?}"),
        }
        assert!(
            parse_request("watch k")
                .unwrap_err()
                .to_string()
                .contains("watch")
        );
        assert!(
            parse_request("put lonely")
                .unwrap_err()
                .to_string()
                .contains("needs a value")
        );
    }
}
