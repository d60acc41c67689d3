//! Lease verbs: grant, revoke, timetolive, list and keep-alive, printed as etcdctl prints them.

use etcd_client::{LeaseTimeToLiveOptions, ResponseHeader};
use serde_json::{Map, Value, json};

use crate::cli::{Format, LeaseCommand, parse_hex_id};
use crate::output;
use crate::{Rpc, Session};

/// etcdctl prints lease responses with the header's fields flattened in (Go struct embedding).
fn flattened(header: Option<&ResponseHeader>, fields: &[(&str, Value)]) -> Value {
    let mut object = Map::new();
    if let Some(Value::Object(header)) = header.map(|h| output::object(&output::header_fields(h))) {
        object.extend(header);
    }
    for (name, value) in fields {
        object.insert((*name).to_owned(), value.clone());
    }
    Value::Object(object)
}

fn lease_id(text: &str) -> anyhow::Result<i64> {
    Ok(parse_hex_id("lease", text)? as i64)
}

pub async fn run(session: &mut Session, command: LeaseCommand) -> anyhow::Result<()> {
    session.require_format("lease", &[Format::Simple, Format::Json])?;
    let json = session.format == Format::Json;
    match command {
        LeaseCommand::Grant { ttl } => {
            let response = session.client.lease_grant(ttl, None).await.rpc()?;
            if json {
                output::print_json(&flattened(
                    response.header(),
                    &[
                        ("ID", json!(response.id())),
                        ("TTL", json!(response.ttl())),
                        ("Error", json!(response.error())),
                    ],
                ));
            } else {
                println!(
                    "lease {:016x} granted with TTL({}s)",
                    response.id(),
                    response.ttl()
                );
            }
        }
        LeaseCommand::Revoke { id } => {
            let id = lease_id(&id)?;
            let response = session.client.lease_revoke(id).await.rpc()?;
            if json {
                output::print_json(&json!({ "header": output::header(response.header()) }));
            } else {
                println!("lease {id:016x} revoked");
            }
        }
        LeaseCommand::Timetolive { id, keys } => {
            let id = lease_id(&id)?;
            let options = keys.then(|| LeaseTimeToLiveOptions::new().with_keys());
            let response = session.client.lease_time_to_live(id, options).await.rpc()?;
            if json {
                let keys: Vec<Value> = response.keys().iter().map(|k| output::bytes(k)).collect();
                output::print_json(&flattened(
                    response.header(),
                    &[
                        ("id", json!(response.id())),
                        ("ttl", json!(response.ttl())),
                        ("granted-ttl", json!(response.granted_ttl())),
                        (
                            "keys",
                            if keys.is_empty() {
                                Value::Null
                            } else {
                                Value::Array(keys)
                            },
                        ),
                    ],
                ));
            } else if response.ttl() == -1 {
                println!("lease {id:016x} already expired");
            } else {
                let mut text = format!(
                    "lease {id:016x} granted with TTL({}s), remaining({}s)",
                    response.granted_ttl(),
                    response.ttl()
                );
                if keys {
                    let names: Vec<String> = response
                        .keys()
                        .iter()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .collect();
                    text.push_str(&format!(", attached keys([{}])", names.join(" ")));
                }
                println!("{text}");
            }
        }
        LeaseCommand::List => {
            let response = session.client.leases().await.rpc()?;
            if json {
                let leases: Vec<Value> = response
                    .leases()
                    .iter()
                    .map(|l| json!({ "id": l.id() }))
                    .collect();
                output::print_json(&flattened(response.header(), &[("leases", Value::Array(leases))]));
            } else {
                println!("found {} leases", response.leases().len());
                for lease in response.leases() {
                    println!("{:016x}", lease.id());
                }
            }
        }
        LeaseCommand::KeepAlive { id, once } => {
            let id = lease_id(&id)?;
            let (mut keeper, mut stream) = match session.client.lease_keep_alive(id).await {
                Ok(pair) => pair,
                // The client reports a lease that is gone before the stream starts.
                Err(etcd_client::Error::LeaseKeepAliveError(_)) => {
                    println!("lease {id:016x} expired or revoked.");
                    return Ok(());
                }
                Err(error) => return Err(error).rpc(),
            };
            loop {
                keeper.keep_alive().await.rpc()?;
                let Some(response) = stream.message().await.rpc()? else {
                    anyhow::bail!("lease {id:016x} keep-alive stream closed by the server");
                };
                if response.ttl() <= 0 {
                    println!("lease {id:016x} expired or revoked.");
                    return Ok(());
                }
                if json {
                    output::print_json(&flattened(
                        response.header(),
                        &[("ID", json!(response.id())), ("TTL", json!(response.ttl()))],
                    ));
                } else {
                    println!("lease {id:016x} keepalived with TTL({})", response.ttl());
                }
                if once {
                    return Ok(());
                }
                // Renew at a third of the TTL, as etcd's client does.
                let pause = std::time::Duration::from_millis(response.ttl() as u64 * 1000 / 3);
                tokio::time::sleep(pause.max(std::time::Duration::from_millis(500))).await;
            }
        }
    }
    Ok(())
}
