//! Membership verbs: add, remove, update, list and promote, printed as etcdctl prints them.

use etcd_client::{MemberAddOptions, MemberListResponse};
use serde_json::{Value, json};

use crate::cli::{Format, MemberCommand, parse_hex_id};
use crate::output;
use crate::{Rpc, Session};

fn cluster_id(header: Option<&etcd_client::ResponseHeader>) -> u64 {
    header.map_or(0, |h| h.cluster_id())
}

pub async fn run(session: &mut Session, command: MemberCommand) -> anyhow::Result<()> {
    let json = session.format == Format::Json;
    match command {
        MemberCommand::List => {
            let response = session.client.member_list().await.rpc()?;
            print_list(session.format, &response);
        }
        MemberCommand::Add {
            name,
            peer_urls,
            learner,
        } => {
            session.require_format("member add", &[Format::Simple, Format::Json])?;
            let options = learner.then(|| MemberAddOptions::new().with_is_learner());
            let response = session.client.member_add(&peer_urls, options).await.rpc()?;
            let added = response.member().map_or(0, |m| m.id());
            if json {
                output::print_json(&output::object(&[
                    ("header", output::header(response.header())),
                    ("member", response.member().map_or(Value::Null, output::member)),
                    ("members", output::members(response.member_list())),
                ]));
                return Ok(());
            }
            println!(
                "Member {added:16x} added to cluster {:16x}",
                cluster_id(response.header())
            );
            // What to start the new member with; Cairn reads these variables as its flags.
            let mut initial = Vec::new();
            for member in response.member_list() {
                let member_name = if member.id() == added {
                    name.as_str()
                } else {
                    member.name()
                };
                for url in member.peer_urls() {
                    initial.push(format!("{member_name}={url}"));
                }
            }
            println!();
            println!("CAIRN_NAME=\"{name}\"");
            println!("CAIRN_INITIAL_CLUSTER=\"{}\"", initial.join(","));
            println!("CAIRN_INITIAL_ADVERTISE_PEER_URLS=\"{}\"", peer_urls.join(","));
            println!("CAIRN_INITIAL_CLUSTER_STATE=\"existing\"");
        }
        MemberCommand::Remove { id } => {
            session.require_format("member remove", &[Format::Simple, Format::Json])?;
            let id = parse_hex_id("member", &id)?;
            let response = session.client.member_remove(id).await.rpc()?;
            print_change(
                session.format,
                "removed from",
                id,
                response.header(),
                response.members(),
            );
        }
        MemberCommand::Update { id, peer_urls } => {
            session.require_format("member update", &[Format::Simple, Format::Json])?;
            let id = parse_hex_id("member", &id)?;
            let response = session.client.member_update(id, peer_urls).await.rpc()?;
            print_change(
                session.format,
                "updated in",
                id,
                response.header(),
                response.members(),
            );
        }
        MemberCommand::Promote { id } => {
            session.require_format("member promote", &[Format::Simple, Format::Json])?;
            let id = parse_hex_id("member", &id)?;
            let response = session.client.member_promote(id).await.rpc()?;
            print_change(
                session.format,
                "promoted in",
                id,
                response.header(),
                response.members(),
            );
        }
    }
    Ok(())
}

/// etcdctl's answer to remove, update and promote: `Member <id> <what> cluster <id>`, or the JSON.
fn print_change(
    format: Format,
    what: &str,
    id: u64,
    header: Option<&etcd_client::ResponseHeader>,
    members: &[etcd_client::Member],
) {
    if format == Format::Json {
        output::print_json(&output::object(&[
            ("header", output::header(header)),
            ("members", output::members(members)),
        ]));
    } else {
        println!("Member {id:16x} {what} cluster {:16x}", cluster_id(header));
    }
}

fn print_list(format: Format, response: &MemberListResponse) {
    let rows: Vec<Vec<String>> = response.members().iter().map(output::member_row).collect();
    match format {
        Format::Json => output::print_json(&json!({
            "header": output::header(response.header()),
            "members": output::members(response.members()),
        })),
        Format::Table => print!(
            "{}",
            output::table(
                &["ID", "STATUS", "NAME", "PEER ADDRS", "CLIENT ADDRS", "IS LEARNER"],
                &rows
            )
        ),
        Format::Simple => {
            for row in rows {
                println!("{}", row.join(", "));
            }
        }
    }
}
