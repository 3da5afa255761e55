//! A key generated on first start into a `0600` file, loaded on every later
//! start, rotated atomically at run time.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;
use zeroize::Zeroizing;

use crate::keys::StaticKey;
use crate::local;
use crate::{Credential, Digest, Error, Principal, VerifyResult};

/// The environment variable that overrides the key file's path by default.
pub const DEFAULT_KEY_FILE_ENV: &str = "AUTH_API_KEY_FILE";

/// The principal id granted to holders of the file's key unless set.
pub const DEFAULT_KEY_FILE_PRINCIPAL: &str = "operator";

const KEY_BYTES: usize = 32;
const KEY_HEX_LEN: usize = KEY_BYTES * 2;

/// A key that lives in a file: generated on first start, loaded after.
///
/// - Missing file: 32 bytes from the OS RNG become 64 lowercase hex chars,
///   written to a new temporary file with mode `0600` (set explicitly, then
///   checked, so the umask cannot weaken it), fsynced and hard-linked into
///   place. Linking fails if the file appeared meanwhile, so two processes
///   starting at once end up with one key that both use.
/// - Existing file: refused if it is a symlink, not a regular file, readable
///   or writable by group or others, or not exactly 64 hex characters
///   (one trailing newline allowed).
/// - The path comes from the builder, overridden by an environment variable
///   (`AUTH_API_KEY_FILE` by default). The path is logged, never the key.
/// - [`rotate`](KeyFile::rotate) replaces the key atomically (write, fsync,
///   rename); delete the file and restart to rotate the old-fashioned way.
///
/// ```
/// use auth_core::{Credential, KeyFile, Verifier, VerifyContext};
/// # let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join(".api_key");
///
/// let first = KeyFile::builder().path(&path).env_var(None).load_or_create().unwrap();
/// assert!(first.was_created());
/// let key = std::fs::read_to_string(&path).unwrap();
/// assert_eq!(key.len(), 64);
///
/// let again = KeyFile::builder().path(&path).env_var(None).load_or_create().unwrap();
/// assert!(!again.was_created());
/// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// assert!(rt.block_on(again.verify(&Credential::new(key), &VerifyContext::default())).is_ok());
/// ```
pub struct KeyFile {
    path: PathBuf,
    key: RwLock<Arc<StaticKey>>,
    /// Bumped under the write lock on every rotation or reload, so that
    /// per-thread copies of the key are dropped at once.
    version: AtomicU64,
    owner: u64,
    principal: Principal,
    created: bool,
}

/// Builds a [`KeyFile`].
#[derive(Clone, Debug)]
pub struct KeyFileBuilder {
    path: Option<PathBuf>,
    env_var: Option<String>,
    principal: Principal,
}

impl KeyFile {
    /// A builder: no path yet, `AUTH_API_KEY_FILE` as the override.
    pub fn builder() -> KeyFileBuilder {
        KeyFileBuilder {
            path: None,
            env_var: Some(DEFAULT_KEY_FILE_ENV.to_owned()),
            principal: Principal::new(DEFAULT_KEY_FILE_PRINCIPAL),
        }
    }

    /// Loads the key at `path` (honouring `AUTH_API_KEY_FILE`), creating it
    /// if missing.
    pub fn load_or_create(path: impl Into<PathBuf>) -> Result<Self, Error> {
        Self::builder().path(path).load_or_create()
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this start generated the key (the file was missing).
    pub fn was_created(&self) -> bool {
        self.created
    }

    /// The digest of the current key.
    pub fn digest(&self) -> Digest {
        *self.key.read().digest()
    }

    /// Replaces the key with a new random one, atomically on disk and in
    /// memory. The old key stops working at once.
    pub fn rotate(&self) -> Result<(), Error> {
        let key = random_key()?;
        let tmp = write_temp(&self.path, &key)?;
        let renamed = fs::rename(&tmp, &self.path).map_err(|source| Error::KeyFileIo {
            path: self.path.clone(),
            source,
        });
        if renamed.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        renamed?;
        sync_parent(&self.path)?;
        self.replace(&key);
        tracing::info!(path = %self.path.display(), "API key rotated");
        Ok(())
    }

    /// Reads the file again (another process may have rotated it).
    pub fn reload(&self) -> Result<(), Error> {
        let key = read_key(&self.path)?.ok_or_else(|| Error::KeyFileIo {
            path: self.path.clone(),
            source: std::io::ErrorKind::NotFound.into(),
        })?;
        self.replace(&key);
        Ok(())
    }

    fn replace(&self, key: &[u8]) {
        let new =
            Arc::new(StaticKey::from_digest(Digest::of(key)).principal(self.principal.clone()));
        let mut current = self.key.write();
        *current = new;
        self.version.fetch_add(1, Ordering::Release);
    }

    #[inline]
    fn check(&self, credential: &Credential) -> VerifyResult {
        self.current().check(credential)
    }

    /// The current key: this thread's copy while no rotation happened, so
    /// that threads do not contend on the lock.
    #[inline]
    fn current(&self) -> Arc<StaticKey> {
        const SLOT: Digest = Digest::from_bytes([0; 32]);
        let version = self.version.load(Ordering::Acquire);
        if let Some(key) = local::get::<Arc<StaticKey>>(self.owner, &SLOT, version, 0) {
            return key;
        }
        let guard = self.key.read();
        let key = Arc::clone(&guard);
        let version = self.version.load(Ordering::Acquire);
        drop(guard);
        local::offer(self.owner, &SLOT, version, u64::MAX, || {
            Arc::new(StaticKey::clone(&key))
        });
        key
    }
}

impl fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFile")
            .field("path", &self.path)
            .field("digest", &self.digest())
            .finish()
    }
}

crate::keys::in_memory_verifier!(KeyFile, |key_file| vec![key_file.digest()]);

impl KeyFileBuilder {
    /// The key file's path (an environment override still wins).
    pub fn path(mut self, path: impl Into<PathBuf>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// The environment variable that overrides the path; `None` for none.
    pub fn env_var(mut self, var: Option<&str>) -> Self {
        self.env_var = var.map(str::to_owned);
        self
    }

    /// The principal granted to holders of the key.
    pub fn principal(mut self, principal: Principal) -> Self {
        self.principal = principal;
        self
    }

    /// The path that will be used: the environment override if set, else
    /// the builder's path.
    pub fn resolve_path(&self) -> Result<PathBuf, Error> {
        self.resolve_path_with(|var| std::env::var_os(var))
    }

    /// [`resolve_path`](Self::resolve_path) with an injected environment.
    fn resolve_path_with(
        &self,
        env: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<PathBuf, Error> {
        if let Some(var) = &self.env_var {
            match env(var) {
                Some(v) if v.to_str().is_some_and(|s| s.trim().is_empty()) => {
                    return Err(Error::EnvInvalid {
                        var: var.clone(),
                        problem: "is set but empty; unset it or give it the key file's path",
                    });
                }
                Some(v) => return Ok(PathBuf::from(v)),
                None => {}
            }
        }
        self.path
            .clone()
            .ok_or_else(|| Error::Config("KeyFile needs a path (builder or environment)".into()))
    }

    /// Loads the key, creating the file with a new random key if missing.
    pub fn load_or_create(self) -> Result<KeyFile, Error> {
        let path = self.resolve_path()?;
        let (key, created) = match read_key(&path)? {
            Some(key) => (key, false),
            None => create_key(&path)?,
        };
        if created {
            tracing::info!(path = %path.display(), "API key generated (read it from the file)");
        } else {
            tracing::info!(path = %path.display(), "API key loaded");
        }
        let key_file = KeyFile {
            key: RwLock::new(Arc::new(
                StaticKey::from_digest(Digest::of(&key)).principal(self.principal.clone()),
            )),
            version: AtomicU64::new(0),
            owner: local::new_owner(),
            path,
            principal: self.principal,
            created,
        };
        Ok(key_file)
    }
}

fn refused(path: &Path, problem: impl Into<String>, fix: &'static str) -> Error {
    Error::KeyFileRefused {
        path: path.to_owned(),
        problem: problem.into(),
        fix,
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::KeyFileIo {
        path: path.to_owned(),
        source,
    }
}

/// Reads and checks the key at `path`; `Ok(None)` when there is no file.
fn read_key(path: &Path) -> Result<Option<Zeroizing<Vec<u8>>>, Error> {
    // O_NOFOLLOW: a symlink is refused by the kernel, with no window between
    // a check and the open.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let mut file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(refused(
                path,
                "is a symbolic link",
                "point the configuration at the real file instead of a link",
            ));
        }
        Err(e) => return Err(io_error(path)(e)),
    };
    let meta = file.metadata().map_err(io_error(path))?;
    if !meta.is_file() {
        return Err(refused(
            path,
            "is not a regular file",
            "remove it so that a key file can be generated there",
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(refused(
            path,
            format!("has mode {mode:04o}: group or others can access it"),
            "run `chmod 600` on it (and consider the key leaked if others could read it)",
        ));
    }
    // Read a little more than a key so an oversized file is noticed, not
    // read whole.
    let mut buf = Zeroizing::new(vec![0u8; KEY_HEX_LEN + 3]);
    let mut len = 0;
    loop {
        let n = file.read(&mut buf[len..]).map_err(io_error(path))?;
        if n == 0 || len + n == buf.len() {
            len += n;
            break;
        }
        len += n;
    }
    let mut content = &buf[..len];
    if let Some(rest) = content.strip_suffix(b"\n") {
        content = rest.strip_suffix(b"\r").unwrap_or(rest);
    }
    if content.len() != KEY_HEX_LEN || !content.iter().all(u8::is_ascii_hexdigit) {
        return Err(refused(
            path,
            format!(
                "does not hold a key of {KEY_HEX_LEN} hex characters ({} bytes found)",
                if len > KEY_HEX_LEN + 2 {
                    "too many".to_owned()
                } else {
                    len.to_string()
                }
            ),
            "delete it to generate a new key on the next start",
        ));
    }
    Ok(Some(Zeroizing::new(content.to_vec())))
}

fn random_key() -> Result<Zeroizing<Vec<u8>>, Error> {
    let mut raw = Zeroizing::new([0u8; KEY_BYTES]);
    getrandom::fill(raw.as_mut()).map_err(|e| Error::Random(e.to_string()))?;
    let mut hex_key = Zeroizing::new(vec![0u8; KEY_HEX_LEN]);
    hex::encode_to_slice(raw.as_ref(), &mut hex_key).expect("64 bytes hold 32 bytes of hex");
    Ok(hex_key)
}

/// Writes `key` to a fresh `0600` temporary file beside `path`, fsynced.
fn write_temp(path: &Path, key: &[u8]) -> Result<PathBuf, Error> {
    let parent = parent_dir(path);
    if !parent.as_os_str().is_empty() && !parent.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(io_error(parent))?;
    }
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).map_err(|e| Error::Random(e.to_string()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "key".to_owned());
    let tmp = parent.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        hex::encode(suffix)
    ));
    let result = (|| {
        let mut file: File = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        // The umask may have removed bits we need or a strange one kept
        // none: set the mode explicitly, then check it took.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        let mode = file.metadata()?.permissions().mode() & 0o777;
        if mode != 0o600 {
            return Err(std::io::Error::other(format!(
                "mode is {mode:04o} after chmod 0600"
            )));
        }
        file.write_all(key)?;
        file.sync_all()
    })();
    match result {
        Ok(()) => Ok(tmp),
        Err(source) => {
            let _ = fs::remove_file(&tmp);
            Err(Error::KeyFileIo { path: tmp, source })
        }
    }
}

/// Creates the key file; if another process created it first, uses theirs.
fn create_key(path: &Path) -> Result<(Zeroizing<Vec<u8>>, bool), Error> {
    let key = random_key()?;
    let tmp = write_temp(path, &key)?;
    // A hard link fails if the target exists: unlike rename, it never
    // replaces a key another process just created.
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            sync_parent(path)?;
            Ok((key, true))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let theirs = read_key(path)?.ok_or_else(|| Error::KeyFileIo {
                path: path.to_owned(),
                source: std::io::ErrorKind::NotFound.into(),
            })?;
            Ok((theirs, false))
        }
        Err(e) => Err(io_error(path)(e)),
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn sync_parent(path: &Path) -> Result<(), Error> {
    let parent = parent_dir(path);
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(io_error(parent))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn builder(path: &Path) -> KeyFileBuilder {
        KeyFile::builder().path(path).env_var(None)
    }

    fn verify(kf: &KeyFile, key: &[u8]) -> bool {
        kf.check(&Credential::new(key)).is_ok()
    }

    #[test]
    fn creates_64_hex_with_mode_0600_then_loads_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dir/.api_key");
        let kf = builder(&path).load_or_create().unwrap();
        assert!(kf.was_created());
        let content = fs::read(&path).unwrap();
        assert_eq!(content.len(), 64);
        assert!(
            content
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        );
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(verify(&kf, &content));

        let again = builder(&path).load_or_create().unwrap();
        assert!(!again.was_created());
        assert!(verify(&again, &content));
        assert_eq!(again.digest(), kf.digest());
        // No temporary files left behind.
        let entries: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(entries.len(), 1);
    }

    #[test]
    fn two_keys_are_different() {
        let dir = tempfile::tempdir().unwrap();
        let a = builder(&dir.path().join("a")).load_or_create().unwrap();
        let b = builder(&dir.path().join("b")).load_or_create().unwrap();
        assert_ne!(a.digest(), b.digest());
    }

    #[test]
    fn concurrent_first_starts_agree_on_one_key() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("key");
            let barrier = std::sync::Barrier::new(8);
            let digests: Vec<Digest> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..8)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            builder(&path).load_or_create().unwrap().digest()
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let on_disk = Digest::of(&fs::read(&path).unwrap());
            assert!(digests.iter().all(|d| *d == on_disk));
        }
    }

    #[test]
    fn refuses_group_or_world_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        fs::write(&path, "a".repeat(64)).unwrap();
        for mode in [0o640, 0o604, 0o660, 0o666] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = builder(&path).load_or_create().unwrap_err().to_string();
            assert!(err.contains("chmod 600"), "{err}");
            assert!(err.contains(&format!("{mode:04o}")), "{err}");
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(builder(&path).load_or_create().is_ok());
    }

    #[test]
    fn refuses_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::write(&real, "a".repeat(64)).unwrap();
        fs::set_permissions(&real, fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("link");
        symlink(&real, &link).unwrap();
        let err = builder(&link).load_or_create().unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        // A dangling link must not be followed to create a file elsewhere.
        let dangling = dir.path().join("dangling");
        symlink(dir.path().join("nowhere"), &dangling).unwrap();
        assert!(builder(&dangling).load_or_create().is_err());
        assert!(!dir.path().join("nowhere").exists());
    }

    #[test]
    fn refuses_malformed_content_without_echoing_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"a".repeat(63),
            b"a".repeat(65),
            b"g".repeat(64),
            [b"a".repeat(63), b" ".to_vec()].concat(),
            b"a".repeat(4096),
            [b"a".repeat(64), b"\n\n".to_vec()].concat(),
        ];
        for content in cases {
            fs::write(&path, &content).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            let err = builder(&path).load_or_create().unwrap_err().to_string();
            assert!(err.contains("64 hex characters"), "{err}");
            assert!(
                !err.contains("aaaaaaaa") && !err.contains("gggggggg"),
                "{err}"
            );
        }
        // One trailing newline (as an editor leaves it) is fine.
        fs::write(&path, [b"b".repeat(64), b"\n".to_vec()].concat()).unwrap();
        let kf = builder(&path).load_or_create().unwrap();
        assert!(verify(&kf, &b"b".repeat(64)));
    }

    #[test]
    fn refuses_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        fs::DirBuilder::new().mode(0o700).create(&path).unwrap();
        let err = builder(&path).load_or_create().unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn rotate_replaces_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let kf = builder(&path).load_or_create().unwrap();
        let old = fs::read(&path).unwrap();
        // Warm this thread's copy of the key: rotation must reach it too.
        for _ in 0..3 {
            assert!(verify(&kf, &old));
        }
        kf.rotate().unwrap();
        let new = fs::read(&path).unwrap();
        assert_ne!(old, new);
        assert!(!verify(&kf, &old));
        assert!(verify(&kf, &new));
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Another holder of the same file picks the rotation up on reload.
        let other = builder(&path).load_or_create().unwrap();
        kf.rotate().unwrap();
        assert!(!verify(&other, &fs::read(&path).unwrap()));
        other.reload().unwrap();
        assert!(verify(&other, &fs::read(&path).unwrap()));
    }

    #[test]
    fn env_override_wins_and_blank_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let var = "AUTH_CORE_TEST_KEY_FILE_OVERRIDE";
        let from_env = dir.path().join("from-env");
        let b = KeyFile::builder()
            .path(dir.path().join("from-builder"))
            .env_var(Some(var));
        assert_eq!(
            b.resolve_path_with(|_| None).unwrap(),
            dir.path().join("from-builder")
        );
        let got = b
            .resolve_path_with(|v| (v == var).then(|| from_env.clone().into_os_string()))
            .unwrap();
        assert_eq!(got, from_env);
        assert!(matches!(
            b.resolve_path_with(|_| Some("  ".into())),
            Err(Error::EnvInvalid { .. })
        ));
        let none = KeyFile::builder().env_var(Some(var));
        assert!(matches!(
            none.resolve_path_with(|_| None),
            Err(Error::Config(_))
        ));
    }
}
