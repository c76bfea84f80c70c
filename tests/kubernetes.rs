//! deploy/kubernetes/: no cluster runs here, so each manifest is parsed (YAML
//! to JSON by python3-yaml) and the fields the design depends on are checked,
//! and the ConfigMap's config (with the Secret's users) is parsed as the
//! relay would. What a cluster does with them is not verified here.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use smarthost::Config;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes");

/// Every YAML document in deploy/kubernetes/NAME.
fn documents(name: &str) -> Vec<Value> {
    let path = Path::new(DIR).join(name);
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(&path)
        .output()
        .expect("python3 is required (scripts/install-test-deps.sh installs it)");
    assert!(
        out.status.success(),
        "{}: {} (python3-yaml is required: scripts/install-test-deps.sh)",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn one(name: &str, kind: &str) -> Value {
    documents(name)
        .into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {name}"))
}

/// The config the pod runs: the ConfigMap's plus the Secret's users, as the
/// init container concatenates them.
fn pod_config() -> Config {
    let map = one("configmap.yaml", "ConfigMap");
    let secret = one("secret.yaml", "Secret");
    let text = format!(
        "{}{}",
        map["data"]["smarthost.toml"].as_str().unwrap(),
        secret["stringData"]["users.toml"].as_str().unwrap()
    );
    Config::parse(&text, Path::new("/etc/smarthost/smarthost.toml"))
        .unwrap_or_else(|e| panic!("the ConfigMap's config: {e}"))
}

#[test]
fn statefulset_gives_each_pod_its_spool_and_drains_before_kill() {
    let config = pod_config();
    let set = one("statefulset.yaml", "StatefulSet");
    let spec = &set["spec"];
    let pod = &spec["template"]["spec"];

    // One PersistentVolumeClaim per pod, mounted where the config spools.
    let claim = &spec["volumeClaimTemplates"][0];
    assert_eq!(claim["metadata"]["name"], "spool");
    assert_eq!(claim["spec"]["accessModes"][0], "ReadWriteOnce");
    let relay = &pod["containers"][0];
    let mounts = relay["volumeMounts"].as_array().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m["name"] == "spool" && m["mountPath"] == config.queue.path.to_str().unwrap()),
        "spool mount at {}",
        config.queue.path.display()
    );

    // SIGTERM, drain for shutdown_grace, exit: all before the kubelet's SIGKILL.
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace > config.limits.shutdown_grace.as_secs() + 5,
        "terminationGracePeriodSeconds {grace} vs shutdown_grace {:?}",
        config.limits.shutdown_grace
    );

    // Readiness: `smarthost health`, which asks the admin /healthz.
    let probe = &relay["readinessProbe"]["exec"]["command"];
    assert_eq!(probe[1], "health");
    assert!(
        config.admin.is_some(),
        "[admin] is set, so health asks /healthz"
    );

    // Non-root, read-only root filesystem, nothing to escalate, in every container.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_ne!(pod["securityContext"]["runAsUser"], 0);
    let all = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(pod["initContainers"].as_array().unwrap());
    for c in all {
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{}", c["name"]);
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{}", c["name"]);
        assert_eq!(sc["capabilities"]["drop"][0], "ALL", "{}", c["name"]);
    }

    // The container port is the one the config listens on (no capability: above 1024).
    let port = relay["ports"][0]["containerPort"].as_u64().unwrap();
    assert!(port > 1024);
    assert!(
        config
            .listeners
            .iter()
            .any(|l| u64::from(l.address.port()) == port)
    );
}

#[test]
fn configmap_secret_service_and_budget() {
    let config = pod_config();
    // Certificates come from the Secret's mount.
    let tls = config.tls.as_ref().expect("[tls] set");
    assert!(
        tls.certificates[0]
            .certificate
            .starts_with("/etc/smarthost/certs")
    );
    let secret = one("secret.yaml", "Secret");
    for key in ["tls.crt", "tls.key", "users.toml"] {
        assert!(secret["stringData"][key].is_string(), "Secret has {key}");
    }
    assert_eq!(config.users.len(), 1, "users from the Secret");

    // Client addresses survive to relay_networks.
    let services = documents("service.yaml");
    let public = services
        .iter()
        .find(|s| s["metadata"]["name"] == "smarthost")
        .unwrap();
    assert_eq!(public["spec"]["externalTrafficPolicy"], "Local");
    assert_eq!(public["spec"]["ports"][0]["port"], 25);
    assert_eq!(public["spec"]["ports"][0]["targetPort"], "smtp");

    // The budget and the services select the StatefulSet's pods.
    let set = one("statefulset.yaml", "StatefulSet");
    let labels = &set["spec"]["template"]["metadata"]["labels"];
    let budget = one("poddisruptionbudget.yaml", "PodDisruptionBudget");
    assert_eq!(&budget["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(budget["spec"]["maxUnavailable"], 1);
    for s in &services {
        assert_eq!(&s["spec"]["selector"], labels);
    }
    assert_eq!(
        set["spec"]["serviceName"],
        services
            .iter()
            .find(|s| s["spec"]["clusterIP"] == "None")
            .unwrap()["metadata"]["name"]
    );
}
