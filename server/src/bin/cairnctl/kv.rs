//! Key-value verbs: put, get, del, txn and compaction, printed as etcdctl prints them.

use std::io::Read;

use anyhow::{Context, bail};
use etcd_client::{
    CompactionOptions, DeleteOptions, DeleteResponse, GetOptions, GetResponse, PutOptions, PutResponse,
    SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, TxnResponse,
};
use serde_json::{Value, json};

use crate::cli::{
    CompactionArgs, DelArgs, Format, GetArgs, KeysArgs, PutArgs, TxnArgs, TxnRequest, parse_hex_id,
};
use crate::output::{self, line};
use crate::{Rpc, Session, txn as txn_text};

pub fn put_options(args: &PutArgs) -> anyhow::Result<PutOptions> {
    let lease = parse_hex_id("lease", &args.lease)?;
    let mut options = PutOptions::new().with_lease(lease as i64);
    if args.prev_kv {
        options = options.with_prev_key();
    }
    if args.ignore_value {
        options = options.with_ignore_value();
    }
    if args.ignore_lease {
        options = options.with_ignore_lease();
    }
    Ok(options)
}

/// How a get or del selects keys, after checking that the flags do not contradict each other.
enum Selection<'a> {
    One,
    Range(&'a str),
    Prefix,
    FromKey,
}

fn selection(keys: &KeysArgs) -> anyhow::Result<Selection<'_>> {
    if keys.prefix && keys.from_key {
        bail!("`--prefix` and `--from-key` cannot be set at the same time, choose one");
    }
    Ok(match (&keys.range_end, keys.prefix, keys.from_key) {
        (Some(_), true, _) | (Some(_), _, true) => {
            bail!("too many arguments, only accept one argument when `--prefix` or `--from-key` is set")
        }
        (Some(end), _, _) => Selection::Range(end),
        (None, true, _) => Selection::Prefix,
        (None, _, true) => Selection::FromKey,
        (None, false, false) => Selection::One,
    })
}

pub fn get_options(args: &GetArgs) -> anyhow::Result<GetOptions> {
    let mut options = GetOptions::new().with_limit(args.limit).with_revision(args.rev);
    options = match selection(&args.keys)? {
        Selection::Range(end) => options.with_range(end.as_bytes()),
        Selection::Prefix => options.with_prefix(),
        Selection::FromKey => options.with_from_key(),
        Selection::One => options,
    };
    options = match args.consistency.as_str() {
        "l" => options,
        "s" => options.with_serializable(),
        other => bail!("unknown consistency flag {other:?}: use l (linearizable) or s (serializable)"),
    };
    let order = match args.order.to_uppercase().as_str() {
        "" => None,
        "ASCEND" => Some(SortOrder::Ascend),
        "DESCEND" => Some(SortOrder::Descend),
        other => bail!("bad sort order {other:?}: use ASCEND or DESCEND"),
    };
    let target = match args.sort_by.to_uppercase().as_str() {
        "" => None,
        "CREATE" => Some(SortTarget::Create),
        "KEY" => Some(SortTarget::Key),
        "MODIFY" => Some(SortTarget::Mod),
        "VALUE" => Some(SortTarget::Value),
        "VERSION" => Some(SortTarget::Version),
        other => bail!("bad sort target {other:?}: use CREATE, KEY, MODIFY, VALUE or VERSION"),
    };
    if order.is_some() || target.is_some() {
        options = options.with_sort(
            target.unwrap_or(SortTarget::Key),
            order.unwrap_or(SortOrder::Ascend),
        );
    }
    if args.keys_only {
        options = options.with_keys_only();
    }
    if args.count_only {
        options = options.with_count_only();
    }
    Ok(options)
}

pub fn delete_options(args: &DelArgs) -> anyhow::Result<DeleteOptions> {
    let mut options = match selection(&args.keys)? {
        Selection::Range(end) => DeleteOptions::new().with_range(end.as_bytes()),
        Selection::Prefix => DeleteOptions::new().with_prefix(),
        Selection::FromKey => DeleteOptions::new().with_from_key(),
        Selection::One => DeleteOptions::new(),
    };
    if args.prev_kv {
        options = options.with_prev_key();
    }
    Ok(options)
}

pub async fn put(session: &mut Session, args: PutArgs) -> anyhow::Result<()> {
    session.require_format("put", &[Format::Simple, Format::Json])?;
    let options = put_options(&args)?;
    let value = match &args.value {
        Some(value) => value.clone().into_bytes(),
        None if args.ignore_value => Vec::new(),
        None => {
            let mut value = Vec::new();
            std::io::stdin()
                .read_to_end(&mut value)
                .context("cannot read the value from stdin")?;
            if value.is_empty() {
                bail!("put command needs 1 argument and input from stdin or 2 arguments");
            }
            value
        }
    };
    let response = session
        .client
        .put(args.key.as_bytes(), value, Some(options))
        .await
        .rpc()?;
    print_put(session.format, &response);
    Ok(())
}

pub async fn get(session: &mut Session, args: GetArgs) -> anyhow::Result<()> {
    session.require_format("get", &[Format::Simple, Format::Json])?;
    let options = get_options(&args)?;
    let response = session
        .client
        .get(args.keys.key.as_bytes(), Some(options))
        .await
        .rpc()?;
    print_get(session.format, &response, &args);
    Ok(())
}

pub async fn del(session: &mut Session, args: DelArgs) -> anyhow::Result<()> {
    session.require_format("del", &[Format::Simple, Format::Json])?;
    let options = delete_options(&args)?;
    let response = session
        .client
        .delete(args.keys.key.as_bytes(), Some(options))
        .await
        .rpc()?;
    print_del(session.format, &response);
    Ok(())
}

pub async fn compaction(session: &mut Session, args: CompactionArgs) -> anyhow::Result<()> {
    session.require_format("compaction", &[Format::Simple, Format::Json])?;
    let options = args.physical.then(|| CompactionOptions::new().with_physical());
    let response = session.client.compact(args.revision, options).await.rpc()?;
    match session.format {
        Format::Json => output::print_json(&json!({ "header": output::header(response.header()) })),
        _ => println!("compacted revision {}", args.revision),
    }
    Ok(())
}

pub async fn txn(session: &mut Session, args: TxnArgs) -> anyhow::Result<()> {
    session.require_format("txn", &[Format::Simple, Format::Json])?;
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout();
    let prompt: Option<&mut dyn std::io::Write> = if args.interactive { Some(&mut stdout) } else { None };
    let [compares, success, failure] = txn_text::read_sections(&mut stdin, prompt)?;
    let compares = compares
        .iter()
        .map(|line| txn_text::parse_compare(line))
        .collect::<Result<Vec<_>, _>>()?;
    let ops = |lines: &[String]| -> anyhow::Result<Vec<TxnOp>> {
        lines
            .iter()
            .map(|line| txn_op(txn_text::parse_request(line)?))
            .collect()
    };
    let request = Txn::new()
        .when(compares)
        .and_then(ops(&success)?)
        .or_else(ops(&failure)?);
    let response = session.client.txn(request).await.rpc()?;
    print_txn(session.format, &response);
    Ok(())
}

fn txn_op(request: TxnRequest) -> anyhow::Result<TxnOp> {
    Ok(match request {
        TxnRequest::Put(args) => {
            let value = args.value.clone().unwrap_or_default();
            TxnOp::put(args.key.as_bytes(), value, Some(put_options(&args)?))
        }
        TxnRequest::Get(args) => TxnOp::get(args.keys.key.as_bytes(), Some(get_options(&args)?)),
        TxnRequest::Del(args) => TxnOp::delete(args.keys.key.as_bytes(), Some(delete_options(&args)?)),
    })
}

fn print_put(format: Format, response: &PutResponse) {
    if format == Format::Json {
        return output::print_json(&put_json(response));
    }
    println!("OK");
    if let Some(prev) = response.prev_key() {
        line(prev.key());
        line(prev.value());
    }
}

fn print_get(format: Format, response: &GetResponse, args: &GetArgs) {
    if format == Format::Json {
        return output::print_json(&get_json(response));
    }
    if args.count_only {
        println!("{}", response.count());
        return;
    }
    for kv in response.kvs() {
        if args.print_value_only {
            line(kv.value());
            continue;
        }
        // With --keys-only the value is empty and etcdctl still prints its (empty) line.
        line(kv.key());
        line(kv.value());
    }
}

fn print_del(format: Format, response: &DeleteResponse) {
    if format == Format::Json {
        return output::print_json(&del_json(response));
    }
    println!("{}", response.deleted());
    for kv in response.prev_kvs() {
        line(kv.key());
        line(kv.value());
    }
}

fn print_txn(format: Format, response: &TxnResponse) {
    if format == Format::Json {
        return output::print_json(&txn_json(response));
    }
    println!(
        "{}",
        if response.succeeded() {
            "SUCCESS"
        } else {
            "FAILURE"
        }
    );
    for op in response.op_responses() {
        println!();
        match op {
            TxnOpResponse::Put(put) => print_put(format, &put),
            TxnOpResponse::Get(get) => {
                for kv in get.kvs() {
                    line(kv.key());
                    line(kv.value());
                }
            }
            TxnOpResponse::Delete(del) => print_del(format, &del),
            TxnOpResponse::Txn(inner) => print_txn(format, &inner),
        }
    }
}

fn put_json(response: &PutResponse) -> Value {
    output::object(&[
        ("header", output::header(response.header())),
        (
            "prev_kv",
            response.prev_key().map_or(Value::Null, output::key_value),
        ),
    ])
}

fn get_json(response: &GetResponse) -> Value {
    output::object(&[
        ("header", output::header(response.header())),
        ("kvs", output::key_values(response.kvs())),
        ("more", json!(response.more())),
        ("count", json!(response.count())),
    ])
}

fn del_json(response: &DeleteResponse) -> Value {
    output::object(&[
        ("header", output::header(response.header())),
        ("deleted", json!(response.deleted())),
        ("prev_kvs", output::key_values(response.prev_kvs())),
    ])
}

fn txn_json(response: &TxnResponse) -> Value {
    let responses: Vec<Value> = response
        .op_responses()
        .iter()
        .map(|op| {
            let (name, body) = match op {
                TxnOpResponse::Put(put) => ("ResponsePut", put_json(put)),
                TxnOpResponse::Get(get) => ("ResponseRange", get_json(get)),
                TxnOpResponse::Delete(del) => ("ResponseDeleteRange", del_json(del)),
                TxnOpResponse::Txn(inner) => ("ResponseTxn", txn_json(inner)),
            };
            json!({ "Response": { name: body } })
        })
        .collect();
    output::object(&[
        ("header", output::header(response.header())),
        ("succeeded", json!(response.succeeded())),
        ("responses", Value::Array(responses)),
    ])
}
