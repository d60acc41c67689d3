//! One probe attempt (httpGet, tcpSocket, exec) against a container, with the probe's timeout.
//! Success and failure counting across attempts is the container supervisor's job.

use std::path::Path;
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Runs the probe once; `Err` says why it failed, in kubelet's words where it has them.
pub async fn probe_once(
    probe: &Probe,
    container: &Container,
    pod_ip: &str,
    pod_exec: &Path,
    spec_file: &Path,
) -> Result<(), String> {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    let attempt = async {
        if let Some(http) = &probe.http_get {
            let port = port_number(&http.port, container)?;
            let host = http
                .host
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| pod_ip.to_owned());
            let path = http.path.clone().unwrap_or_else(|| "/".into());
            let headers: Vec<(String, String)> = http
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect();
            http_get(&host, port, &path, &headers).await
        } else if let Some(tcp) = &probe.tcp_socket {
            let port = port_number(&tcp.port, container)?;
            let host = tcp
                .host
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| pod_ip.to_owned());
            tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map(drop)
                .map_err(|e| format!("dial tcp {host}:{port}: {e}"))
        } else if let Some(exec) = &probe.exec {
            let command = exec.command.clone().unwrap_or_default();
            let output = tokio::process::Command::new(pod_exec)
                .arg("pod-exec")
                .arg(format!("--spec={}", spec_file.display()))
                .arg("--")
                .args(&command)
                .kill_on_drop(true)
                .output()
                .await
                .map_err(|e| format!("cannot run {command:?}: {e}"))?;
            if output.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "command {command:?} exited with {}: {}",
                    output.status.code().unwrap_or(-1),
                    String::from_utf8_lossy(&output.stdout).trim()
                ))
            }
        } else {
            Err("the probe has no handler (httpGet, tcpSocket or exec)".into())
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("timeout after {}s", timeout.as_secs())),
    }
}

/// A port by number or by the name of one of the container's ports.
pub fn port_number(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(number) => u16::try_from(*number).map_err(|_| format!("invalid port {number}")),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("container {:?} has no port named {name:?}", container.name)),
    }
}

/// kubelet's HTTP probe: a status from 200 to 399 is a success.
async fn http_get(host: &str, port: u16, path: &str, headers: &[(String, String)]) -> Result<(), String> {
    let url = format!("http://{host}:{port}{path}");
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("Get \"{url}\": dial tcp {host}:{port}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("Get \"{url}\": {e}"))?;
    tokio::spawn(connection);
    let mut request = hyper::Request::get(path)
        .header("host", format!("{host}:{port}"))
        .header("user-agent", "kube-probe/1.20");
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("Get \"{url}\": {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("Get \"{url}\": {e}"))?;
    let status = response.status().as_u16();
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {status}"))
    }
}
