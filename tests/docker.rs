//! The Docker image and the compose topology, checked as a black box by
//! `scripts/docker-test.sh` (it builds the image: minutes). Opt-in, not part of
//! CI: `SMARTHOST_DOCKER_TEST=1 cargo test --test docker -- --nocapture`.

#[test]
fn docker_image_and_compose_topology() {
    if std::env::var_os("SMARTHOST_DOCKER_TEST").is_none_or(|v| v != "1") {
        eprintln!(
            "skipped: set SMARTHOST_DOCKER_TEST=1 to build the image and run scripts/docker-test.sh (needs a Docker engine, docker-compose and swaks)"
        );
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/docker-test.sh");
    let status = std::process::Command::new("bash")
        .arg(script)
        .status()
        .expect("run scripts/docker-test.sh");
    assert!(status.success(), "scripts/docker-test.sh failed: {status}");
}
