//! The first hour of a new administrator (issue 12 §4), through the real
//! binary: what check-config catches, the words its errors use, the help
//! text, `queue flush` without a relay, the demo's hints.

mod common;

use std::path::{Path, PathBuf};

use common::binary::*;

/// A config with no optional section, so each test adds only what it checks.
const BASE: &str =
    "[[listener]]\naddress = \"127.0.0.1:0\"\ntls = \"starttls\"\n\n[queue]\npath = \"spool\"\n";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn check_config(path: &Path) -> Output {
    run(&["check-config", "--config", path.to_str().unwrap()])
}

/// Exit 1 and an error naming `file:line: `key``, whose fix mentions `fix`.
fn assert_error(out: &Output, path: &Path, line: usize, key: &str, fix: &str) {
    let all = format!("stdout: {}\nstderr: {}", out.stdout, out.stderr);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let location = format!("error: {}:{line}: `{key}`", path.display());
    assert!(out.stderr.contains(&location), "wanted {location:?}; {all}");
    let fix_text = out.stderr.split_once("fix:").map_or("", |(_, f)| f);
    assert!(fix_text.contains(fix), "fix should mention {fix:?}; {all}");
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

// ---------------------------------------------------------------------------
// 2. check-config loads what serve loads

fn upstream(extra: &str) -> String {
    format!(
        "{BASE}\n[[upstream]]\nname = \"eu-1\"\naddress = \"127.0.0.1:2\"\ntls = \"required\"\n{extra}"
    )
}

#[test]
fn a_missing_upstream_ca_file_fails_check_config_and_serve_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = upstream("ca_file = \"missing-ca.pem\"\n");
    let path = write(dir.path(), "ca.toml", &text);
    let line = line_of(&text, "ca_file");
    let out = check_config(&path);
    assert_error(&out, &path, line, "upstream.ca_file", "PEM");
    assert!(out.stderr.contains("missing-ca.pem"), "{}", out.stderr);
    // serve gives the same located error instead of failing at start-up.
    let out = run(&["serve", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("{}:{line}: `upstream.ca_file`", path.display())),
        "{}",
        out.stderr
    );
}

#[test]
fn a_ca_file_without_certificates_fails_check_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty.pem"), "not a certificate\n").unwrap();
    let text = upstream("ca_file = \"empty.pem\"\n");
    let path = write(dir.path(), "ca.toml", &text);
    let out = check_config(&path);
    assert_error(
        &out,
        &path,
        line_of(&text, "ca_file"),
        "upstream.ca_file",
        "PEM",
    );
}

#[test]
fn a_missing_password_file_fails_check_config_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = upstream("username = \"relay\"\npassword_file = \"missing-password\"\n");
    let path = write(dir.path(), "pw.toml", &text);
    let out = check_config(&path);
    assert_error(
        &out,
        &path,
        line_of(&text, "password_file"),
        "upstream.password_file",
        "password",
    );
    assert!(out.stderr.contains("missing-password"), "{}", out.stderr);
}

// ---------------------------------------------------------------------------
// 3. bare addresses in network lists

#[test]
fn a_bare_address_is_one_host_and_a_bad_entry_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{BASE}\n[access]\nrelay_networks = [\"10.1.2.3\", \"2001:db8::25\"]\ntrusted_proxies = [\"192.0.2.5\"]\n"
    );
    let path = write(dir.path(), "bare.toml", &text);
    let out = check_config(&path);
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("relay networks: 10.1.2.3/32, 2001:db8::25/128"),
        "{}",
        out.stdout
    );

    // A list over several lines: the error is at the bad entry and names it.
    let text = format!(
        "{BASE}\n[access]\nrelay_networks = [\n    \"10.1.2.3\",\n    \"10.9.0.0/33\",\n]\n"
    );
    let path = write(dir.path(), "bad.toml", &text);
    let out = check_config(&path);
    assert_error(
        &out,
        &path,
        line_of(&text, "10.9.0.0/33"),
        "access.relay_networks",
        "CIDR",
    );
    assert!(out.stderr.contains("\"10.9.0.0/33\""), "{}", out.stderr);
}

// ---------------------------------------------------------------------------
// 4. the open-relay guard counts public space

#[test]
fn a_slash_one_of_public_space_is_an_open_relay_private_space_is_not() {
    let dir = tempfile::tempdir().unwrap();
    for (i, nets) in [
        "\"0.0.0.0/1\"",
        "\"128.0.0.0/1\"",
        // Two /2s make a /1; private space added to them changes nothing.
        "\"10.0.0.0/8\", \"0.0.0.0/2\", \"64.0.0.0/2\"",
        "\"::/1\"",
        "\"2000::/4\", \"3000::/4\"",
    ]
    .iter()
    .enumerate()
    {
        for key in ["relay_networks", "trusted_proxies"] {
            let text = format!("{BASE}\n[access]\n{key} = [{nets}]\n");
            let path = write(dir.path(), &format!("open-{i}-{key}.toml"), &text);
            let out = check_config(&path);
            assert_error(
                &out,
                &path,
                line_of(&text, key),
                &format!("access.{key}"),
                "your own",
            );
            assert!(out.stderr.contains("open relay"), "{}", out.stderr);
        }
    }
    // Private and loopback space may be as wide as it is, without warning.
    let text = format!(
        "{BASE}\n[access]\nrelay_networks = [\"10.0.0.0/8\", \"172.16.0.0/12\", \"192.168.0.0/16\", \"127.0.0.0/8\", \"fc00::/7\"]\n"
    );
    let out = check_config(&write(dir.path(), "private.toml", &text));
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    assert!(
        !out.stdout.contains("relay_networks"),
        "no warning wanted: {}",
        out.stdout
    );
    // 240 public /16s, none wide alone, together nearly a /8: accepted with a warning.
    let nets: Vec<String> = (0..240).map(|i| format!("\"64.{i}.0.0/16\"")).collect();
    let text = format!("{BASE}\n[access]\nrelay_networks = [{}]\n", nets.join(", "));
    let out = check_config(&write(dir.path(), "wide.toml", &text));
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("warning:") && l.contains("public IPv4 addresses")),
        "{}",
        out.stdout
    );
}

// ---------------------------------------------------------------------------
// 5. errors in the administrator's words

#[test]
fn config_errors_use_the_administrators_words() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{BASE}\n[limits]\nmax_recipients = \"ten\"\n");
    let path = write(dir.path(), "number.toml", &text);
    let out = check_config(&path);
    assert_error(&out, &path, 9, "limits.max_recipients", "digits");
    assert!(out.stderr.contains("a whole number"), "{}", out.stderr);
    assert!(!out.stderr.contains("usize"), "{}", out.stderr);

    let text = format!("{BASE}\n[limits]\ndata_timeout = 60\n");
    let path = write(dir.path(), "duration.toml", &text);
    let out = check_config(&path);
    assert_error(&out, &path, 9, "limits.data_timeout", "\"30s\"");
    assert!(
        out.stderr.contains("a duration such as \"60s\""),
        "{}",
        out.stderr
    );

    // A misspelt section is named as one, not blamed on the section above.
    let text = format!("{BASE}\n[acess]\nrelay_networks = [\"10.0.0.0/8\"]\n");
    let path = write(dir.path(), "section.toml", &text);
    let out = check_config(&path);
    assert_error(&out, &path, 8, "acess", "[access]");
    assert!(
        out.stderr.contains("unknown section [acess]"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("`listener`"), "{}", out.stderr);
    assert!(
        out.stderr.contains("the example config"),
        "fix names the example config by what it is: {}",
        out.stderr
    );
}
