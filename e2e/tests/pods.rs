//! The local kubelet and cluster DNS with the real controllers: a StatefulSet of the workspace's
//! `podtool` comes up 3/3 through the StatefulSet controller, its pods find each other through
//! cluster DNS (A and SRV) from inside a pod, a deleted pod comes back with its claim's data, a
//! failing liveness probe restarts a container, a ServiceAccount without a permission gets 403,
//! and `sandbox down` leaves no process and no mount behind.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_e2e::sandbox::Sandbox;
use cairn_e2e::testkit::{TestSandbox, kubectl_path, wait_for};
use futures::FutureExt;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Api;

/// Where the StatefulSet mounts its claim: absent on this machine, so the kubelet creates the
/// mount point, and `sandbox down` must remove it again.
const DATA: &str = "/var/lib/cairn-e2e-podtool";
/// Where the rbac scenario mounts a ConfigMap (written out in its YAML).
const SETTINGS: &str = "/etc/cairn-e2e-settings";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn podtool() -> &'static str {
    env!("CARGO_BIN_EXE_podtool")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_run_as_local_processes_under_the_real_controllers() {
    for path in [DATA, SETTINGS] {
        assert!(!Path::new(path).exists(), "{path} exists on this machine already");
    }
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::for_test(dir.path(), 17543, 24890, 12);
    let env = TestSandbox::start(sandbox, Path::new(env!("CARGO_BIN_EXE_sandbox"))).await;
    let scenarios = async {
        tokio::join!(
            statefulset_with_dns_and_claims(&env),
            liveness_failure_restarts_the_container(&env),
            service_account_permissions_are_enforced(&env),
        )
    };
    let outcome = AssertUnwindSafe(scenarios).catch_unwind().await;
    let dir_text = dir.path().display().to_string();
    env.down();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }

    let left: Vec<String> = processes_mentioning(&dir_text);
    assert!(left.is_empty(), "processes left behind: {left:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&dir_text) && !mounts.contains(DATA),
        "mounts left behind:\n{mounts}"
    );
    assert!(
        !Path::new(DATA).exists(),
        "the mount point the kubelet created is still there"
    );
}

async fn statefulset_with_dns_and_claims(env: &TestSandbox) {
    let ns = env.namespace("sts").await;
    ns.apply(&format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  selector: {{app: web}}
  ports: [{{name: http, port: 8080, protocol: TCP}}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: web}}
spec:
  serviceName: web
  replicas: 3
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 10
      containers:
      - name: main
        image: registry.example/cairn/podtool:latest
        args: [serve, --listen, "$(POD_IP):8080"]
        env:
        - {{name: POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}
        ports: [{{name: http, containerPort: 8080, protocol: TCP}}]
        readinessProbe: {{httpGet: {{path: /healthz, port: http}}, periodSeconds: 1}}
        volumeMounts: [{{name: data, mountPath: {DATA}}}]
  volumeClaimTemplates:
  - metadata: {{name: data}}
    spec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 1Gi}}}}}}
"#
    ))
    .await;
    ns.wait_statefulset_ready("web", 3, Duration::from_secs(90)).await;

    let pods: Api<Pod> = ns.api();
    let mut ips = Vec::new();
    for i in 0..3 {
        let pod = pods.get(&format!("web-{i}")).await.unwrap();
        ips.push(pod.status.unwrap().pod_ip.expect("a pod IP"));
    }
    let mut distinct = ips.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "every pod has its own IP: {ips:?}");

    // From inside web-0, through the pod's /etc/resolv.conf (search path and cluster DNS). The
    // cluster DNS follows EndpointSlices, which catch up with Ready pods a moment after the
    // StatefulSet counts them.
    wait_for(
        "web-1.web to resolve inside web-0",
        Duration::from_secs(15),
        || async {
            let resolved = ns.exec("web-0", None, &[podtool(), "resolve", "web-1.web"]);
            (text(&resolved.stdout).trim() == ips[1]).then_some(())
        },
    )
    .await;
    let fqdn = format!("web-2.web.{}.svc.cluster.local", ns.name);
    let resolved = ns.exec("web-0", None, &["getent", "hosts", &fqdn]);
    assert!(
        text(&resolved.stdout).starts_with(&ips[2]),
        "getent: {}",
        text(&resolved.stdout)
    );
    let srv = ns.exec("web-0", None, &[podtool(), "srv", "_http._tcp.web"]);
    let expected: Vec<String> = (0..3)
        .map(|i| format!("0 100 8080 web-{i}.web.{}.svc.cluster.local.", ns.name))
        .collect();
    assert_eq!(
        text(&srv.stdout).lines().collect::<Vec<_>>(),
        expected,
        "{}",
        text(&srv.stderr)
    );
    let hostname = ns.exec("web-1", None, &["hostname"]);
    assert_eq!(text(&hostname.stdout), "web-1\n");

    // The claim outlives the pod: web-1 comes back (a new pod) with the same data.
    let marker = format!("{DATA}/marker");
    let wrote = ns.exec("web-1", None, &["sh", "-c", &format!("echo kept > {marker}")]);
    assert!(wrote.status.success(), "{}", text(&wrote.stderr));
    let before = pods.get("web-1").await.unwrap().metadata.uid;
    ns.delete_pod("web-1").await;
    let after = ns.wait_pod_ready("web-1", Duration::from_secs(60)).await;
    assert_ne!(after.metadata.uid, before);
    let read = ns.exec("web-1", None, &["cat", &marker]);
    assert_eq!(text(&read.stdout), "kept\n", "{}", text(&read.stderr));
    assert!(
        ns.logs("web-1", None, false).contains("serving on"),
        "the new container's log"
    );
    let log = ns.logs("web-0", None, false);
    assert!(log.contains(&format!("serving on {}:8080", ips[0])), "{log}");
    ns.delete().await;
}

async fn liveness_failure_restarts_the_container(env: &TestSandbox) {
    let ns = env.namespace("liveness").await;
    ns.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: sick}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: podtool
    args: [serve, --listen, "$(POD_IP):8080"]
    env: [{name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}]
    livenessProbe: {httpGet: {path: /status/500, port: 8080}, periodSeconds: 1, failureThreshold: 2}
---
apiVersion: v1
kind: Pod
metadata: {name: elsewhere}
spec:
  containers: [{name: main, image: "docker.io/library/nginx:1.25"}]
"#,
    )
    .await;
    let pods: Api<Pod> = ns.api();
    let status = wait_for(
        "a restart after failed liveness probes",
        Duration::from_secs(60),
        || async {
            let status = pods.get("sick").await.ok()?.status?;
            let container = status.container_statuses?.into_iter().next()?;
            (container.restart_count >= 1).then_some(container)
        },
    )
    .await;
    assert!(
        status.last_state.and_then(|s| s.terminated).is_some(),
        "the last run's termination"
    );
    // Early probes may find the server not listening yet; once it is, the 500 shows.
    let events: Api<Event> = ns.api();
    wait_for(
        "the liveness failure and the kill as events",
        Duration::from_secs(60),
        || async {
            let events = events.list(&Default::default()).await.ok()?;
            let said = |reason: &str, message: &str| {
                events
                    .items
                    .iter()
                    .any(|e| e.reason.as_deref() == Some(reason) && e.message.as_deref() == Some(message))
            };
            (said(
                "Unhealthy",
                "Liveness probe failed: HTTP probe failed with statuscode: 500",
            ) && said(
                "Killing",
                "Container main failed liveness probe, will be restarted",
            ))
            .then_some(())
        },
    )
    .await;

    let waiting = wait_for(
        "the unknown image to be refused",
        Duration::from_secs(30),
        || async {
            let status = pods.get("elsewhere").await.ok()?.status?;
            status.container_statuses?.into_iter().next()?.state?.waiting
        },
    )
    .await;
    assert_eq!(waiting.reason.as_deref(), Some("ErrImagePull"));
    let message = waiting.message.unwrap_or_default();
    assert!(
        message.contains("\"docker.io/library/nginx:1.25\" is not available in the sandbox"),
        "{message}"
    );
    ns.delete().await;
}

async fn service_account_permissions_are_enforced(env: &TestSandbox) {
    let ns = env.namespace("rbac").await;
    ns.apply(
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: reader}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {greeting: hello}
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  serviceAccountName: reader
  containers:
  - name: main
    image: podtool
    args: [serve, --listen, "$(POD_IP):8080"]
    env: [{name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}]
    envFrom: [{configMapRef: {name: settings}, prefix: CFG_}]
    volumeMounts: [{name: settings, mountPath: /etc/cairn-e2e-settings}]
    startupProbe: {exec: {command: [sh, -c, 'test "$(hostname)" = client']}, periodSeconds: 1}
    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
  volumes: [{name: settings, configMap: {name: settings}}]
"#,
    )
    .await;
    // Ready needs the exec startup probe (run inside the pod) and the TCP readiness probe to pass.
    ns.wait_pod_ready("client", Duration::from_secs(60)).await;
    let settings = ns.exec(
        "client",
        None,
        &[
            "sh",
            "-c",
            "echo $CFG_greeting; cat /etc/cairn-e2e-settings/greeting",
        ],
    );
    assert_eq!(
        text(&settings.stdout),
        "hello\nhello",
        "{}",
        text(&settings.stderr)
    );
    let kubectl: PathBuf = kubectl_path();
    let kubectl = kubectl.to_str().unwrap();
    let denied = ns.exec("client", None, &[kubectl, "get", "configmaps"]);
    let stderr = text(&denied.stderr);
    assert!(!denied.status.success());
    assert!(
        stderr.contains("forbidden") && stderr.contains(&format!("system:serviceaccount:{}:reader", ns.name)),
        "{stderr}"
    );

    ns.apply(&format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: read-configmaps}}
rules: [{{apiGroups: [""], resources: [configmaps], verbs: [get, list]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: reader-reads-configmaps}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: read-configmaps}}
subjects: [{{kind: ServiceAccount, name: reader, namespace: {}}}]
"#,
        ns.name
    ))
    .await;
    wait_for(
        "the RoleBinding to take effect",
        Duration::from_secs(30),
        || async {
            ns.exec("client", None, &[kubectl, "get", "configmaps"])
                .status
                .success()
                .then_some(())
        },
    )
    .await;
    ns.delete().await;
}

fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = text(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) {
                found.push(cmdline);
            }
        }
    }
    found
}
