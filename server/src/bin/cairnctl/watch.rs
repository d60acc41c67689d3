//! `cairnctl watch`: etcdctl's watch, printing what etcdctl prints — events as type, key and value
//! lines, progress notifications, cancellations — in one-shot, interactive (`-i`) and exec forms.

use std::io::BufRead;

use clap::Parser;
use etcd_client::{Event, EventType, WatchOptions, WatchResponse, WatchStream};

use crate::cli::WatchArgs;
use crate::output;
use crate::{Exit, Rpc, Session};

/// The options of a watch line in interactive mode: `watch [options] key [range_end]`.
#[derive(Debug, Parser)]
#[command(name = "watch", no_binary_name = true)]
struct InteractiveWatch {
    key: String,
    range_end: Option<String>,
    #[arg(long)]
    prefix: bool,
    #[arg(long, default_value_t = 0)]
    rev: i64,
    #[arg(long)]
    prev_kv: bool,
    #[arg(long)]
    progress_notify: bool,
}

/// Which keys and from where, as the client asks the server.
fn options(
    key: &str,
    range_end: Option<&str>,
    prefix: bool,
    rev: i64,
    prev_kv: bool,
    progress: bool,
) -> anyhow::Result<WatchOptions> {
    let mut options = WatchOptions::new().with_start_revision(rev);
    if let Some(end) = range_end {
        if prefix {
            anyhow::bail!("`range_end` and `--prefix` are mutually exclusive");
        }
        options = options.with_range(end.as_bytes());
    }
    if prefix {
        options = if key.is_empty() {
            options.with_all_keys()
        } else {
            options.with_prefix()
        };
    }
    if prev_kv {
        options = options.with_prev_key();
    }
    if progress {
        options = options.with_progress_notify();
    }
    Ok(options)
}

pub async fn run(session: &mut Session, args: WatchArgs) -> anyhow::Result<()> {
    if args.interactive {
        return interactive(session).await;
    }
    let key = args
        .key
        .clone()
        .ok_or_else(|| Exit::bad_args("watch needs a key (or -i)"))?;
    let options = options(
        &key,
        args.range_end.as_deref(),
        args.prefix,
        args.rev,
        args.prev_kv,
        args.progress_notify,
    )
    .map_err(|e| Exit::bad_args(&e.to_string()))?;
    let mut stream = session.client.watch(key.as_bytes(), Some(options)).await.rpc()?;
    while let Some(response) = stream.message().await.rpc()? {
        if !print(&response, &args.command)? {
            break;
        }
    }
    Err(Exit::interrupted("watch is canceled by the server").into())
}

/// Reads `watch ...` and `progress` lines from stdin, all on one watch stream.
async fn interactive(session: &mut Session) -> anyhow::Result<()> {
    let (lines, mut incoming) = tokio::sync::mpsc::unbounded_channel::<std::io::Result<String>>();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            if lines.send(line).is_err() {
                return;
            }
        }
        let _ = lines.send(Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "EOF")));
    });
    let mut stream: Option<WatchStream> = None;
    loop {
        tokio::select! {
            line = incoming.recv() => {
                let line = match line {
                    Some(Ok(line)) => line,
                    Some(Err(error)) => {
                        return Err(Exit::invalid_input(&format!("Error reading watch request line: {error}")).into());
                    }
                    None => return Ok(()),
                };
                let words: Vec<&str> = line.split_whitespace().collect();
                match words.first() {
                    Some(&"watch") => {
                        let Ok(parsed) = InteractiveWatch::try_parse_from(&words[1..]) else {
                            eprintln!("Invalid command {line} (command type or key is not provided)");
                            continue;
                        };
                        let options = match options(
                            &parsed.key,
                            parsed.range_end.as_deref(),
                            parsed.prefix,
                            parsed.rev,
                            parsed.prev_kv,
                            parsed.progress_notify,
                        ) {
                            Ok(options) => options,
                            Err(error) => {
                                eprintln!("Invalid command {line} ({error})");
                                continue;
                            }
                        };
                        match &mut stream {
                            Some(stream) => stream.watch(parsed.key.as_bytes(), Some(options)).await.rpc()?,
                            None => {
                                stream = Some(session.client.watch(parsed.key.as_bytes(), Some(options)).await.rpc()?);
                            }
                        }
                    }
                    Some(&"progress") => {
                        if let Some(stream) = &mut stream {
                            stream.request_progress().await.rpc()?;
                        }
                    }
                    Some(_) => eprintln!("Invalid command {line} (only support watch)"),
                    None => eprintln!("Invalid command: {line} (watch and progress supported)"),
                }
            }
            response = next(&mut stream) => {
                match response.rpc()? {
                    Some(response) => { print(&response, &[])?; }
                    None => stream = None,
                }
            }
        }
    }
}

async fn next(stream: &mut Option<WatchStream>) -> Result<Option<WatchResponse>, etcd_client::Error> {
    match stream {
        Some(stream) => stream.message().await,
        None => std::future::pending().await,
    }
}

/// Prints one response as etcdctl does, running `command` once per event when given; false when
/// the watch ended.
fn print(response: &WatchResponse, command: &[String]) -> anyhow::Result<bool> {
    if response.created() && !response.canceled() {
        return Ok(true);
    }
    let revision = response.header().map_or(0, |h| h.revision());
    if response.canceled() {
        let reason = if response.compact_revision() != 0 {
            "etcdserver: mvcc: required revision has been compacted".to_owned()
        } else if response.cancel_reason().is_empty() {
            "etcdserver: mvcc: required revision is a future revision".to_owned()
        } else {
            response.cancel_reason().to_owned()
        };
        eprintln!("watch was canceled ({reason})");
    }
    let progress = response.events().is_empty() && !response.canceled() && response.compact_revision() == 0;
    if progress && revision != 0 {
        println!("progress notify: {revision}");
    }
    for event in response.events() {
        println!("{}", kind(event));
        if let Some(previous) = event.prev_kv() {
            output::line(previous.key());
            output::line(previous.value());
        }
        if let Some(kv) = event.kv() {
            output::line(kv.key());
            output::line(kv.value());
        }
    }
    if let Some((program, arguments)) = command.split_first() {
        for event in response.events() {
            let kv = event.kv();
            let status = std::process::Command::new(program)
                .args(arguments)
                .env("ETCD_WATCH_REVISION", revision.to_string())
                .env("ETCD_WATCH_EVENT_TYPE", go_quote(kind(event).as_bytes()))
                .env("ETCD_WATCH_KEY", go_quote(kv.map_or(&[][..], |kv| kv.key())))
                .env("ETCD_WATCH_VALUE", go_quote(kv.map_or(&[][..], |kv| kv.value())))
                .status();
            match status {
                Ok(status) if status.success() => {}
                Ok(status) => anyhow::bail!("command {command:?} error ({status})"),
                Err(error) => anyhow::bail!("command {command:?} error ({error})"),
            }
        }
    }
    Ok(!response.canceled())
}

/// An event's type as etcd names it.
fn kind(event: &Event) -> &'static str {
    match event.event_type() {
        EventType::Put => "PUT",
        EventType::Delete => "DELETE",
    }
}

/// Bytes as Go's `%q` writes them: a double-quoted string with Go's escapes.
pub fn go_quote(bytes: &[u8]) -> String {
    let mut quoted = String::from("\"");
    let mut rest = bytes;
    while !rest.is_empty() {
        let (text, invalid) = match std::str::from_utf8(rest) {
            Ok(text) => (text, &[][..]),
            Err(error) => {
                let (valid, after) = rest.split_at(error.valid_up_to());
                (std::str::from_utf8(valid).unwrap_or_default(), after)
            }
        };
        for c in text.chars() {
            match c {
                '"' => quoted.push_str("\\\""),
                '\\' => quoted.push_str("\\\\"),
                '\u{7}' => quoted.push_str("\\a"),
                '\u{8}' => quoted.push_str("\\b"),
                '\u{c}' => quoted.push_str("\\f"),
                '\n' => quoted.push_str("\\n"),
                '\r' => quoted.push_str("\\r"),
                '\t' => quoted.push_str("\\t"),
                '\u{b}' => quoted.push_str("\\v"),
                c if (c as u32) < 0x20 || c == '\u{7f}' => quoted.push_str(&format!("\\x{:02x}", c as u32)),
                c if c.is_control() => quoted.push_str(&format!("\\u{:04x}", c as u32)),
                c => quoted.push(c),
            }
        }
        match invalid.split_first() {
            Some((byte, after)) => {
                quoted.push_str(&format!("\\x{byte:02x}"));
                rest = after;
            }
            None => rest = &[],
        }
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::go_quote;

    #[test]
    fn quotes_like_go() {
        assert_eq!(go_quote(b"PUT"), "\"PUT\"");
        assert_eq!(go_quote(b"a \"b\"\n\\"), "\"a \\\"b\\\"\\n\\\\\"");
        assert_eq!(go_quote(b"\x00\xff\x7f"), "\"\\x00\\xff\\x7f\"");
        assert_eq!(go_quote("é".as_bytes()), "\"é\"");
    }
}
