//! The pod's identity: what a `Configure` request changes in the guest.
//!
//! Guests restored from one snapshot all wake up with the same RNG state, the
//! wall clock of the moment the snapshot was taken and the same hostname. The
//! host's `Configure` (sent to cold-booted guests too, so there is one code
//! path) fixes that: [`validate`] checks the whole [`PodConfig`] without side
//! effects, then [`apply`] sets the clock, reseeds the kernel RNG, sets the
//! hostname, sets up the network ([`super::network`]: `lo`, `eth0`,
//! `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`) and publishes the
//! pod's UID and hostname under [`PODINFO_DIR`].
//!
//! # Design
//!
//! Validation is pure and complete before anything is applied, so an invalid
//! request changes nothing. The steps then run in a fixed order and stop at
//! the first failure, whose error names the step (`set the clock: EPERM: ...`).
//! The clock goes first so that everything after it (file times, log lines)
//! carries the pod's time, not the snapshot's.
//!
//! Mixing bytes into the pool is not enough on Linux 6.1: the CRNG only
//! reseeds from the pool on its own schedule (up to a minute later), so until
//! then every clone would keep producing the same random numbers. After
//! `RNDADDENTROPY` the agent therefore forces a reseed with `RNDRESEEDCRNG`.
//!
//! `/etc/podinfo/{uid,hostname}` follow the Kubernetes downward-API volume
//! convention: one file per field, holding the bare value with no trailing
//! newline. Each file is replaced atomically (write, then rename), so a
//! container never reads half a value.
//!
//! # Limitations
//!
//! The side effects need root in a guest, so unit tests cover the validation
//! and the pure helpers only (and [`write_podinfo`] in a temporary directory).
//! Outside PID 1 (a developer running the agent on a workstation) [`apply`]
//! refuses to run rather than change that machine's clock and hostname.

use std::fs::{self, File};
use std::io;
use std::ops::RangeInclusive;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use guest_agent::protocol::PodConfig;
use nix::errno::Errno;
use nix::sys::time::TimeSpec;
use nix::time::{clock_settime, ClockId};

use super::init::is_pid1;
use super::network::{self, NetworkError};

/// Where `hosts` and `resolv.conf` go.
const ETC_DIR: &str = "/etc";
/// Where the pod's downward-API style files go.
pub const PODINFO_DIR: &str = "/etc/podinfo";
/// Accepted lengths of [`PodConfig::entropy`], in bytes.
pub const ENTROPY_LEN: RangeInclusive<usize> = 32..=512;
/// Longest accepted [`PodConfig::pod_uid`].
pub const MAX_POD_UID_LEN: usize = 64;
/// Longest DNS label, hence longest [`PodConfig::hostname`].
pub const MAX_HOSTNAME_LEN: usize = 63;
/// Shortest accepted [`PodConfig::heartbeat_ms`].
pub const MIN_HEARTBEAT_MS: u64 = 10;
/// The kernel device whose ioctls feed and reseed the RNG.
const URANDOM: &str = "/dev/urandom";
/// Bytes in one `rand_pool_info` word (`int` and `__u32`).
const WORD: usize = 4;

/// `RNDADDENTROPY`, `_IOW('R', 0x03, int[2])`, from
/// include/uapi/linux/random.h: mixes a `struct rand_pool_info` into the
/// input pool and credits its `entropy_count` bits.
const RNDADDENTROPY: u32 = 0x4008_5203;
/// `RNDRESEEDCRNG`, `_IO('R', 0x07)`, from include/uapi/linux/random.h:
/// reseeds the CRNG from the input pool now (Linux 4.17 and later).
const RNDRESEEDCRNG: u32 = 0x5207;

/// The raw ioctl wrappers; [`reseed_rng`] is their only caller.
mod ioctl {
    use super::{RNDADDENTROPY, RNDRESEEDCRNG};

    nix::ioctl_write_ptr_bad!(
        /// `ioctl(fd, RNDADDENTROPY, data)`.
        ///
        /// # Safety
        ///
        /// `fd` must be open on a random device, and `data` must point to a
        /// `struct rand_pool_info` whose `buf` holds at least `buf_size`
        /// bytes.
        rnd_add_entropy,
        RNDADDENTROPY,
        libc::c_int
    );

    nix::ioctl_none_bad!(
        /// `ioctl(fd, RNDRESEEDCRNG)`.
        ///
        /// # Safety
        ///
        /// `fd` must be open on a random device (the ioctl takes no argument).
        rnd_reseed_crng,
        RNDRESEEDCRNG
    );
}

/// Why a `Configure` request was refused or failed; the reply to the host
/// carries the chain.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A field of the request is out of range; nothing was applied.
    #[error("invalid {field}: {problem}")]
    Invalid {
        /// The [`PodConfig`] field.
        field: &'static str,
        /// What is wrong and what is accepted.
        problem: String,
    },
    /// The agent is not the guest's init.
    #[error(
        "not PID 1: refusing to change this machine's clock, RNG and hostname; \
         run the agent as a guest's /init"
    )]
    NotPid1,
    /// `clock_settime(CLOCK_REALTIME)` failed.
    #[error("set the clock")]
    Clock(#[source] Errno),
    /// The random device could not be opened.
    #[error("reseed the RNG: open {URANDOM}")]
    OpenRandom(#[source] io::Error),
    /// `RNDADDENTROPY` failed.
    #[error("reseed the RNG: RNDADDENTROPY")]
    AddEntropy(#[source] Errno),
    /// `RNDRESEEDCRNG` failed.
    #[error("reseed the RNG: RNDRESEEDCRNG")]
    ReseedCrng(#[source] Errno),
    /// `sethostname` failed.
    #[error("set the hostname")]
    Hostname(#[source] Errno),
    /// The network, `/etc/hosts` or `/etc/resolv.conf` could not be set up.
    #[error("configure the network")]
    Network(#[source] NetworkError),
    /// A pod info file or its directory could not be written.
    #[error("write {path}")]
    Podinfo {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn invalid(field: &'static str, problem: String) -> IdentityError {
    IdentityError::Invalid { field, problem }
}

/// Checks every field of `config`, with no side effects.
pub fn validate(config: &PodConfig) -> Result<(), IdentityError> {
    check_pod_uid(&config.pod_uid)?;
    check_hostname(&config.hostname)?;
    if config.unix_nanos >= 1_000_000_000 {
        return Err(invalid(
            "unix_nanos",
            format!("{} is not below 1000000000 (one second)", config.unix_nanos),
        ));
    }
    check_entropy_len(config.entropy.len())?;
    if let Some(net) = &config.network {
        network::validate(net).map_err(|e| match e {
            NetworkError::Invalid { field, problem } => invalid(field, problem),
            other => IdentityError::Network(other),
        })?;
    }
    match config.heartbeat_ms {
        Some(ms) if ms < MIN_HEARTBEAT_MS => Err(invalid(
            "heartbeat_ms",
            format!("{ms} ms is below the minimum of {MIN_HEARTBEAT_MS} ms"),
        )),
        _ => Ok(()),
    }
}

fn check_pod_uid(uid: &str) -> Result<(), IdentityError> {
    let problem = if uid.is_empty() {
        "is empty; give the pod's UID".to_string()
    } else if uid.len() > MAX_POD_UID_LEN {
        format!(
            "is {} bytes long; at most {MAX_POD_UID_LEN} are allowed",
            uid.len()
        )
    } else if !uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        format!("{uid:?} has characters outside [A-Za-z0-9-]")
    } else {
        return Ok(());
    };
    Err(invalid("pod_uid", problem))
}

fn check_hostname(name: &str) -> Result<(), IdentityError> {
    const RULE: &str = "a DNS label is 1-63 characters of [a-z0-9-], \
                        not starting or ending with '-'";
    let valid_char = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
    let problem = if name.is_empty() {
        format!("is empty; {RULE}")
    } else if name.len() > MAX_HOSTNAME_LEN {
        format!("is {} bytes long; {RULE}", name.len())
    } else if !name.bytes().all(valid_char) || name.starts_with('-') || name.ends_with('-') {
        format!("{name:?} is not a DNS label; {RULE}")
    } else {
        return Ok(());
    };
    Err(invalid("hostname", problem))
}

fn check_entropy_len(len: usize) -> Result<(), IdentityError> {
    if ENTROPY_LEN.contains(&len) {
        return Ok(());
    }
    Err(invalid(
        "entropy",
        format!(
            "{len} bytes; give {} to {} bytes",
            ENTROPY_LEN.start(),
            ENTROPY_LEN.end()
        ),
    ))
}

/// [`validate`]s `config`, then applies it: the clock, the RNG, the
/// hostname, then the pod info files, stopping at the first step that fails.
/// The heartbeat period is the caller's (it belongs to the agent's loop).
pub fn apply(config: &PodConfig) -> Result<(), IdentityError> {
    validate(config)?;
    if !is_pid1() {
        return Err(IdentityError::NotPid1);
    }
    let now = TimeSpec::new(config.unix_secs, config.unix_nanos.into());
    clock_settime(ClockId::CLOCK_REALTIME, now).map_err(IdentityError::Clock)?;
    reseed_rng(&config.entropy)?;
    nix::unistd::sethostname(&config.hostname).map_err(IdentityError::Hostname)?;
    apply_network(config).map_err(IdentityError::Network)?;
    write_podinfo(Path::new(PODINFO_DIR), &config.pod_uid, &config.hostname)
}

/// `lo` up, `eth0` and the default route if the pod has a network, then
/// `/etc/hosts` and `/etc/resolv.conf`.
fn apply_network(config: &PodConfig) -> Result<(), NetworkError> {
    network::loopback_up()?;
    if let Some(net) = &config.network {
        network::configure_interface(net)?;
    }
    network::write_files(
        Path::new(ETC_DIR),
        &config.hostname,
        config.network.as_ref(),
    )
}

/// A `struct rand_pool_info` (include/uapi/linux/random.h) as native-endian
/// 32-bit words: `int entropy_count` (bits credited), `int buf_size` (bytes),
/// then `__u32 buf[]` holding the bytes, zero-padded to a whole word.
///
/// The constructor guarantees what the ioctl relies on: `buf` holds at least
/// `buf_size` bytes.
#[derive(Debug)]
struct RandPoolInfo(Vec<u32>);

impl RandPoolInfo {
    /// Wraps `entropy` (of a length in [`ENTROPY_LEN`]), crediting 8 bits per
    /// byte.
    fn new(entropy: &[u8]) -> Result<Self, IdentityError> {
        check_entropy_len(entropy.len())?;
        let len = u32::try_from(entropy.len()).expect("at most 512: checked above");
        let mut words = Vec::with_capacity(2 + entropy.len().div_ceil(WORD));
        words.push(len * 8);
        words.push(len);
        words.extend(entropy.chunks(WORD).map(|chunk| {
            let mut word = [0; WORD];
            word[..chunk.len()].copy_from_slice(chunk);
            u32::from_ne_bytes(word)
        }));
        Ok(Self(words))
    }

    fn as_ptr(&self) -> *const libc::c_int {
        self.0.as_ptr().cast()
    }
}

/// Mixes `entropy` into the kernel's input pool, crediting it, then reseeds
/// the CRNG from the pool at once.
fn reseed_rng(entropy: &[u8]) -> Result<(), IdentityError> {
    let pool = RandPoolInfo::new(entropy)?;
    let dev = File::options()
        .write(true)
        .open(URANDOM)
        .map_err(IdentityError::OpenRandom)?;
    let fd = dev.as_raw_fd();
    // SAFETY: `fd` is open on /dev/urandom and stays open while `dev` lives,
    // past this call; `pool` is a `RandPoolInfo`, whose constructor sizes its
    // `buf` to hold `buf_size` bytes, and the kernel only reads from it.
    unsafe { ioctl::rnd_add_entropy(fd, pool.as_ptr()) }.map_err(IdentityError::AddEntropy)?;
    // SAFETY: `fd` is open on /dev/urandom (see above); this ioctl takes no
    // argument and touches no user memory.
    unsafe { ioctl::rnd_reseed_crng(fd) }.map_err(IdentityError::ReseedCrng)?;
    Ok(())
}

/// Writes `uid` and `hostname` to `<dir>/uid` and `<dir>/hostname` (bare
/// values, no newline), creating `dir` and replacing each file atomically.
pub fn write_podinfo(dir: &Path, uid: &str, hostname: &str) -> Result<(), IdentityError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| IdentityError::Podinfo { path, source }
    };
    fs::create_dir_all(dir).map_err(err(dir))?;
    for (name, value) in [("uid", uid), ("hostname", hostname)] {
        let path = dir.join(name);
        write_atomic(&path, value).map_err(err(&path))?;
    }
    Ok(())
}

/// Replaces `path` with `contents` atomically: a reader sees the old file or
/// the new one, never half of it. The temporary file is `.NAME.tmp` beside it.
pub fn write_atomic(path: &Path, contents: &str) -> io::Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    fs::write(&tmp, contents)?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> PodConfig {
        PodConfig {
            pod_uid: "0f3c2a9e-5b1d-4c7e-9a8f-1e2d3c4b5a69".into(),
            hostname: "web-0".into(),
            unix_secs: 1_700_000_000,
            unix_nanos: 0,
            entropy: vec![7; 32],
            heartbeat_ms: None,
            network: None,
            pod_limits: Default::default(),
        }
    }

    /// The field `validate` names for `config`, or `None` if it accepts it.
    fn rejected_field(config: &PodConfig) -> Option<&'static str> {
        match validate(config) {
            Ok(()) => None,
            Err(IdentityError::Invalid { field, .. }) => Some(field),
            Err(e) => panic!("validate must only return Invalid, got {e:?}"),
        }
    }

    #[test]
    fn a_typical_config_is_valid() {
        assert_eq!(rejected_field(&config()), None);
        let edge = PodConfig {
            pod_uid: "A".repeat(MAX_POD_UID_LEN),
            hostname: "a".repeat(MAX_HOSTNAME_LEN),
            unix_secs: i64::MIN,
            unix_nanos: 999_999_999,
            entropy: vec![0; *ENTROPY_LEN.end()],
            heartbeat_ms: Some(MIN_HEARTBEAT_MS),
            network: None,
            pod_limits: Default::default(),
        };
        assert_eq!(rejected_field(&edge), None);
    }

    #[test]
    fn hostnames_must_be_dns_labels() {
        for good in ["a", "0", "web-0", "a-b-c", "9lives"] {
            let c = PodConfig {
                hostname: good.into(),
                ..config()
            };
            assert_eq!(rejected_field(&c), None, "{good:?}");
        }
        let too_long = "a".repeat(MAX_HOSTNAME_LEN + 1);
        for bad in [
            "",
            "-web",
            "web-",
            "Web",
            "web_0",
            "web.local",
            "wéb",
            &too_long,
        ] {
            let c = PodConfig {
                hostname: bad.into(),
                ..config()
            };
            assert_eq!(rejected_field(&c), Some("hostname"), "{bad:?}");
        }
    }

    #[test]
    fn pod_uids_are_short_alphanumeric_and_dashes() {
        let too_long = "a".repeat(MAX_POD_UID_LEN + 1);
        for bad in ["", "a b", "uid/..", "ünicode", "a_b", &too_long] {
            let c = PodConfig {
                pod_uid: bad.into(),
                ..config()
            };
            assert_eq!(rejected_field(&c), Some("pod_uid"), "{bad:?}");
        }
    }

    #[test]
    fn entropy_length_must_be_32_to_512_bytes() {
        for (len, ok) in [
            (0, false),
            (31, false),
            (32, true),
            (512, true),
            (513, false),
        ] {
            let c = PodConfig {
                entropy: vec![1; len],
                ..config()
            };
            let expected = (!ok).then_some("entropy");
            assert_eq!(rejected_field(&c), expected, "{len} bytes");
        }
    }

    #[test]
    fn nanoseconds_must_be_below_one_second() {
        let c = PodConfig {
            unix_nanos: 1_000_000_000,
            ..config()
        };
        assert_eq!(rejected_field(&c), Some("unix_nanos"));
    }

    #[test]
    fn heartbeat_below_the_minimum_is_rejected() {
        for (ms, ok) in [
            (0, false),
            (MIN_HEARTBEAT_MS - 1, false),
            (MIN_HEARTBEAT_MS, true),
        ] {
            let c = PodConfig {
                heartbeat_ms: Some(ms),
                ..config()
            };
            let expected = (!ok).then_some("heartbeat_ms");
            assert_eq!(rejected_field(&c), expected, "{ms} ms");
        }
    }

    #[test]
    fn invalid_messages_name_the_field_and_the_rule() {
        let c = PodConfig {
            hostname: "Web".into(),
            ..config()
        };
        let msg = validate(&c).unwrap_err().to_string();
        assert!(msg.starts_with("invalid hostname: \"Web\""), "{msg}");
        assert!(msg.contains("[a-z0-9-]"), "{msg}");
        // An overlong value is described, not echoed back to the host.
        let c = PodConfig {
            pod_uid: "x".repeat(100_000),
            ..config()
        };
        let msg = validate(&c).unwrap_err().to_string();
        assert!(msg.len() < 100, "{msg}");
    }

    #[test]
    fn ioctl_numbers_match_the_kernel_macros() {
        let add = nix::request_code_write!(b'R', 0x03, 2 * std::mem::size_of::<libc::c_int>());
        // i128 holds both the glibc (c_ulong) and the musl (c_int) request type.
        assert_eq!(i128::from(add), i128::from(RNDADDENTROPY));
        let reseed = nix::request_code_none!(b'R', 0x07);
        assert_eq!(i128::from(reseed), i128::from(RNDRESEEDCRNG));
    }

    #[test]
    fn rand_pool_info_is_header_then_padded_bytes() {
        let entropy: Vec<u8> = (1..=33).collect();
        let pool = RandPoolInfo::new(&entropy).unwrap();
        let words = &pool.0;
        assert_eq!(words.len(), 2 + 9, "33 bytes round up to 9 words");
        assert_eq!(words[0], 33 * 8, "entropy_count is in bits");
        assert_eq!(words[1], 33, "buf_size is in bytes");
        let buf: Vec<u8> = words[2..].iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert_eq!(&buf[..33], entropy.as_slice());
        assert_eq!(&buf[33..], &[0, 0, 0]);
        assert_eq!(pool.as_ptr().cast::<u32>(), words.as_ptr());
    }

    #[test]
    fn rand_pool_info_refuses_lengths_outside_the_range() {
        assert!(RandPoolInfo::new(&[0; 31]).is_err());
        assert!(RandPoolInfo::new(&[0; 513]).is_err());
        let exact = RandPoolInfo::new(&[0xff; 32]).unwrap();
        assert_eq!(exact.0.len(), 2 + 8);
    }

    #[test]
    fn podinfo_files_hold_the_bare_values_and_are_replaced() {
        let dir =
            std::env::temp_dir().join(format!("unipod-agent-podinfo-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let podinfo = dir.join("etc/podinfo");
        write_podinfo(&podinfo, "uid-1", "old").unwrap();
        write_podinfo(&podinfo, "uid-2", "web-0").unwrap();
        assert_eq!(fs::read_to_string(podinfo.join("uid")).unwrap(), "uid-2");
        assert_eq!(
            fs::read_to_string(podinfo.join("hostname")).unwrap(),
            "web-0"
        );
        let mut names: Vec<_> = fs::read_dir(&podinfo)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["hostname", "uid"], "no temporary files left");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn podinfo_errors_name_the_path() {
        let file =
            std::env::temp_dir().join(format!("unipod-agent-podinfo-file-{}", std::process::id()));
        fs::write(&file, "not a directory").unwrap();
        let err = write_podinfo(&file, "uid", "host").unwrap_err();
        fs::remove_file(&file).unwrap();
        assert!(err.to_string().contains(&*file.to_string_lossy()), "{err}");
    }
}
