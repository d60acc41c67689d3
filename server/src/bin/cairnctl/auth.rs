//! Users, roles and auth itself (`user`, `role`, `auth`), printed as etcdctl prints them.

use std::io::{BufRead, IsTerminal, Write};

use etcd_client::{Permission, PermissionType, RoleRevokePermissionOptions, UserAddOptions};

use crate::cli::{
    AuthCommand, Format, Interactive, PermissionKeys, PermissionKind, RoleCommand, UserCommand,
};
use crate::{Exit, Rpc, Session, describe};

/// etcd's refusal of AuthEnable while root lacks the root role.
const ROOT_ROLE_MISSING: &str = "etcdserver: root user does not have root role";

/// A password from stdin: prompted for on a terminal (and typed twice when `confirm`), read as
/// one line otherwise (`--interactive=false`).
fn read_password(name: &str, interactive: &Interactive, confirm: bool) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let prompt = interactive.interactive && stdin.is_terminal();
    let line = |question: &str| -> anyhow::Result<String> {
        if prompt {
            eprint!("{question}");
            std::io::stderr().flush()?;
        }
        let mut line = String::new();
        stdin.lock().read_line(&mut line)?;
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    };
    let password = line(&format!("Password of {name}: "))?;
    if prompt && confirm && line(&format!("Type password of {name} again for confirmation: "))? != password {
        return Err(Exit::invalid_input("given passwords are different").into());
    }
    Ok(password)
}

pub async fn user(session: &mut Session, command: UserCommand) -> anyhow::Result<()> {
    session.require_format("user", &[Format::Simple])?;
    let client = &mut session.client;
    match command {
        UserCommand::Add {
            name: user,
            new_user_password,
            no_password,
            interactive,
        } => {
            let (name, password) = match (user.split_once(':'), new_user_password) {
                _ if no_password => (user.clone(), String::new()),
                (Some((name, password)), _) => (name.to_owned(), password.to_owned()),
                (None, Some(password)) => (user.clone(), password),
                (None, None) => (user.clone(), read_password(&user, &interactive, true)?),
            };
            let options = no_password.then(|| UserAddOptions::new().with_no_pwd());
            client.user_add(name.as_str(), password, options).await.rpc()?;
            println!("User {name} created");
        }
        UserCommand::Delete { name } => {
            client.user_delete(name.as_str()).await.rpc()?;
            println!("User {name} deleted");
        }
        UserCommand::Get { name, detail } => {
            let roles = client.user_get(name.as_str()).await.rpc()?.roles().to_vec();
            println!("User: {name}");
            if detail {
                for role in roles {
                    let permissions = client.role_get(role.as_str()).await.rpc()?.permissions();
                    println!();
                    print_role(&role, &permissions);
                }
            } else {
                let listed: String = roles.iter().map(|r| format!(" {r}")).collect();
                println!("Roles:{listed}");
            }
        }
        UserCommand::List => {
            for user in client.user_list().await.rpc()?.users() {
                println!("{user}");
            }
        }
        UserCommand::Passwd { name, interactive } => {
            let password = read_password(&name, &interactive, true)?;
            client.user_change_password(name.as_str(), password).await.rpc()?;
            println!("Password updated");
        }
        UserCommand::GrantRole { name: user, role } => {
            client.user_grant_role(user.as_str(), role.as_str()).await.rpc()?;
            println!("Role {role} is granted to user {user}");
        }
        UserCommand::RevokeRole { name: user, role } => {
            client
                .user_revoke_role(user.as_str(), role.as_str())
                .await
                .rpc()?;
            println!("Role {role} is revoked from user {user}");
        }
    }
    Ok(())
}

/// The range end a permission's flags ask for, as etcdctl works it out.
fn range_end(keys: &PermissionKeys) -> anyhow::Result<Option<Vec<u8>>> {
    let prefix = keys.prefix.unwrap_or(false);
    let from_key = keys.from_key.unwrap_or(false);
    match (&keys.range_end, prefix, from_key) {
        (Some(_), true, _) | (Some(_), _, true) | (None, true, true) => {
            Err(Exit::bad_args("--prefix, --from-key and a range end cannot be combined").into())
        }
        (Some(end), false, false) => Ok(Some(end.as_bytes().to_vec())),
        (None, true, false) => Ok(Some(cairn::mvcc::prefix_end(keys.key.as_bytes()))),
        (None, false, true) => Ok(Some(vec![0])),
        (None, false, false) => Ok(None),
    }
}

pub async fn role(session: &mut Session, command: RoleCommand) -> anyhow::Result<()> {
    session.require_format("role", &[Format::Simple])?;
    let client = &mut session.client;
    match command {
        RoleCommand::Add { name } => {
            client.role_add(name.as_str()).await.rpc()?;
            println!("Role {name} created");
        }
        RoleCommand::Delete { name } => {
            client.role_delete(name.as_str()).await.rpc()?;
            println!("Role {name} deleted");
        }
        RoleCommand::Get { name } => {
            let permissions = client.role_get(name.as_str()).await.rpc()?.permissions();
            print_role(&name, &permissions);
        }
        RoleCommand::List => {
            for role in client.role_list().await.rpc()?.roles() {
                println!("{role}");
            }
        }
        RoleCommand::GrantPermission { name, kind, keys } => {
            let kind = match kind {
                PermissionKind::Read => PermissionType::Read,
                PermissionKind::Write => PermissionType::Write,
                PermissionKind::Readwrite => PermissionType::Readwrite,
            };
            let mut permission = Permission::new(kind, keys.key.as_str());
            if let Some(end) = range_end(&keys)? {
                permission = permission.with_range_end(end);
            }
            client
                .role_grant_permission(name.as_str(), permission)
                .await
                .rpc()?;
            println!("Role {name} updated");
        }
        RoleCommand::RevokePermission { name, keys } => {
            let end = range_end(&keys)?;
            let options = end
                .clone()
                .map(|end| RoleRevokePermissionOptions::new().with_range_end(end));
            client
                .role_revoke_permission(name.as_str(), keys.key.as_str(), options)
                .await
                .rpc()?;
            match end {
                None => println!("Permission of key {} is revoked from role {name}", keys.key),
                Some(end) => println!(
                    "Permission of range [{}, {}) is revoked from role {name}",
                    keys.key,
                    String::from_utf8_lossy(&end)
                ),
            }
        }
    }
    Ok(())
}

/// A role's permissions as etcdctl lists them: reads, then writes, one range per line.
fn print_role(name: &str, permissions: &[Permission]) {
    println!("Role {name}");
    let line = |permission: &Permission| {
        let key = String::from_utf8_lossy(permission.key());
        let end = permission.range_end();
        if end.is_empty() {
            return format!("\t{key}");
        }
        let mut line = if end == [0] {
            format!("\t[{key}, <open ended>")
        } else {
            format!("\t[{key}, {})", String::from_utf8_lossy(end))
        };
        if !permission.key().is_empty() && cairn::mvcc::prefix_end(permission.key()) == end {
            line.push_str(&format!(" (prefix {key})"));
        }
        line
    };
    let of_kind = |wanted: PermissionType| {
        permissions.iter().filter(move |p| {
            p.get_type() == wanted as i32 || p.get_type() == PermissionType::Readwrite as i32
        })
    };
    println!("KV Read:");
    for permission in of_kind(PermissionType::Read) {
        println!("{}", line(permission));
    }
    println!("KV Write:");
    for permission in of_kind(PermissionType::Write) {
        println!("{}", line(permission));
    }
}

pub async fn auth(session: &mut Session, command: AuthCommand) -> anyhow::Result<()> {
    session.require_format("auth", &[Format::Simple])?;
    let client = &mut session.client;
    match command {
        AuthCommand::Enable => {
            // As etcdctl: a root user without the root role gets it, once.
            let mut granted = false;
            loop {
                match client.auth_enable().await {
                    Ok(_) => break,
                    Err(error) if !granted && describe(&error) == ROOT_ROLE_MISSING => {
                        granted = true;
                        if let Err(error) = client.role_add("root").await
                            && !describe(&error).contains("role name already exists")
                        {
                            return Err(error).rpc();
                        }
                        client.user_grant_role("root", "root").await.rpc()?;
                    }
                    Err(error) => return Err(error).rpc(),
                }
            }
            println!("Authentication Enabled");
        }
        AuthCommand::Disable => {
            client.auth_disable().await.rpc()?;
            println!("Authentication Disabled");
        }
    }
    Ok(())
}
