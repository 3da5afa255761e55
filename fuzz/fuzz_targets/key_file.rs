//! Key-file loading over arbitrary file contents and modes: never a panic;
//! a file is used only when it is private and holds exactly 64 hex
//! characters (with one optional line ending), and then that key, and only
//! that key, is accepted; a refusal depends only on the content's length
//! and the mode, so it cannot echo the content.
#![no_main]
#![forbid(unsafe_code)]

use std::os::unix::fs::PermissionsExt;

use auth_core::{Credential, KeyFile, Verifier, VerifyContext};
use libfuzzer_sys::fuzz_target;

// The first two bytes are the file's mode (little-endian), the rest its
// content: plain bytes, so that seeds are easy to write (corpus/key_file).
fuzz_target!(|data: &[u8]| {
    let (mode, content) = match data {
        [a, b, rest @ ..] => (u16::from_le_bytes([*a, *b]), rest),
        _ => return,
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("key");
    std::fs::write(&path, content).expect("write");
    let mode = u32::from(mode) & 0o777 | 0o400;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");

    let loaded = KeyFile::builder()
        .path(&path)
        .env_var(None)
        .load_or_create();

    let body = content
        .strip_suffix(b"\n")
        .map(|rest| rest.strip_suffix(b"\r").unwrap_or(rest))
        .unwrap_or(content);
    let well_formed = body.len() == 64 && body.iter().all(u8::is_ascii_hexdigit);
    let private = mode & 0o077 == 0;
    match loaded {
        Ok(key_file) => {
            assert!(well_formed && private, "used a file it should refuse");
            let ctx = VerifyContext::default();
            let right = key_file
                .verify(&Credential::new(body.to_vec()), &ctx)
                .now();
            assert!(matches!(right, Some(Ok(_))), "the file's key is refused");
            let mut other = body.to_vec();
            other[0] = if other[0] == b'0' { b'1' } else { b'0' };
            let wrong = key_file.verify(&Credential::new(other), &ctx).now();
            assert!(matches!(wrong, Some(Err(_))), "another key is accepted");
        }
        Err(e) => {
            assert!(!(well_formed && private), "refused a good file: {e}");
            // The refusal must not depend on the content's bytes (only on
            // its length and the mode): the same refusal for a file of as
            // many `z`s.
            let control = dir.path().join("control");
            std::fs::write(&control, vec![b'z'; content.len()]).expect("write");
            std::fs::set_permissions(&control, std::fs::Permissions::from_mode(mode))
                .expect("chmod");
            let expected = KeyFile::builder()
                .path(&control)
                .env_var(None)
                .load_or_create()
                .expect_err("a file of z's is never a key");
            assert_eq!(
                e.to_string().replace(&*path.to_string_lossy(), "<path>"),
                expected
                    .to_string()
                    .replace(&*control.to_string_lossy(), "<path>"),
                "the refusal depends on the content"
            );
        }
    }
});
