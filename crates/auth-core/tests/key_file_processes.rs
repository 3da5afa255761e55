//! Eight processes starting at once against a missing key file end with
//! exactly one key, which all eight accept.
#![allow(unused_crate_dependencies)]

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use auth_core::{Credential, Digest, KeyFile, Verifier, VerifyContext};

const CHILD_PATH: &str = "AUTH_CORE_TEST_KEY_FILE_CHILD_PATH";
const CHILD_START: &str = "AUTH_CORE_TEST_KEY_FILE_CHILD_START_MS";
const TEST_NAME: &str = "processes_starting_at_once_share_one_key";

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

#[test]
fn processes_starting_at_once_share_one_key() {
    if let Ok(path) = std::env::var(CHILD_PATH) {
        // Child: wait for the common start, then race the others.
        let start: u128 = std::env::var(CHILD_START).unwrap().parse().unwrap();
        while unix_ms() < start {
            std::thread::sleep(Duration::from_micros(200));
        }
        let key_file = KeyFile::builder()
            .path(&path)
            .env_var(None)
            .load_or_create()
            .unwrap();
        // The key on disk, as a client would send it, through this
        // process's verifier.
        let on_disk = std::fs::read_to_string(&path).unwrap();
        let accepts = key_file
            .verify(
                &Credential::new(on_disk.trim_end().as_bytes().to_vec()),
                &VerifyContext::default(),
            )
            .now()
            .is_some_and(|answer| answer.is_ok());
        println!(
            "DIGEST={} CREATED={} ACCEPTS={accepts}",
            key_file.digest().to_hex(),
            key_file.was_created()
        );
        return;
    }
    let exe = std::env::current_exe().unwrap();
    for round in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/.api_key");
        // Spawn all eight first; they start together at `start`.
        let start = unix_ms() + 400;
        let children: Vec<_> = (0..8)
            .map(|_| {
                Command::new(&exe)
                    .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
                    .env(CHILD_PATH, &path)
                    .env(CHILD_START, start.to_string())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut digests = Vec::new();
        let mut created = 0;
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "round {round}: a child failed");
            let text = String::from_utf8(out.stdout).unwrap();
            // libtest may print the test's name on the same line.
            let at = text
                .find("DIGEST=")
                .unwrap_or_else(|| panic!("round {round}: no digest in {text}"));
            let mut parts = text[at..].split_whitespace();
            digests.push(parts.next().unwrap()["DIGEST=".len()..].to_owned());
            if parts.next() == Some("CREATED=true") {
                created += 1;
            }
            assert_eq!(
                parts.next(),
                Some("ACCEPTS=true"),
                "round {round}: a process refused the key on disk"
            );
        }
        let on_disk = std::fs::read(&path).unwrap();
        let expected = Digest::of(&on_disk).to_hex();
        assert_eq!(digests.len(), 8);
        assert!(
            digests.iter().all(|d| *d == expected),
            "round {round}: processes ended with different keys"
        );
        assert_eq!(
            created, 1,
            "round {round}: {created} processes claim to have created the key"
        );
    }
}
