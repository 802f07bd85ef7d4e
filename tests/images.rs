//! End-to-end tests of `unipod image`: the real binary imports the busybox
//! test image that `make images` builds (images/build-oci.sh), in each of
//! its three forms, and the erofs result is checked file by file.
//!
//! The erofs file is read with `fsck.erofs --extract` (erofs-utils, no
//! mount needed) and, as root, also loop-mounted read-only; where erofs
//! cannot be mounted on the host that part is skipped with the reason.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::{temp_dir, workspace};

/// The test image's three forms, built by images/build-oci.sh if missing.
struct TestImage {
    layout: PathBuf,
    oci_tar: PathBuf,
    docker_tar: PathBuf,
}

/// The test image, built once per test binary (the tests run in parallel).
fn test_image() -> &'static TestImage {
    static IMAGE: OnceLock<TestImage> = OnceLock::new();
    IMAGE.get_or_init(build_test_image)
}

fn build_test_image() -> TestImage {
    let dir = workspace().join("target/guest/oci");
    let image = TestImage {
        layout: dir.join("busybox"),
        oci_tar: dir.join("busybox-oci.tar"),
        docker_tar: dir.join("busybox-docker-save.tar"),
    };
    if !image.layout.join("index.json").is_file()
        || !image.oci_tar.is_file()
        || !image.docker_tar.is_file()
    {
        common::run_ok(
            Command::new("bash")
                .arg(workspace().join("images/build-oci.sh"))
                .arg(&dir),
        );
    }
    image
}

fn image_cmd(state: &Path, args: &[&str]) -> Output {
    let mut all: Vec<&str> = vec!["image"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--state-dir", state.to_str().expect("utf-8 path")]);
    common::unipod(&all)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `unipod image ARGS`, asserting success; returns (stdout, stderr).
fn image_ok(state: &Path, args: &[&str]) -> (String, String) {
    let out = image_cmd(state, args);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "unipod image {args:?} failed ({}):\n{stdout}{stderr}",
        out.status
    );
    (stdout, stderr)
}

/// The `digest:` line of an import's output.
fn digest_of(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("digest: "))
        .unwrap_or_else(|| panic!("no digest in:\n{stdout}"))
        .to_string()
}

fn rootfs(state: &Path, digest: &str) -> PathBuf {
    state
        .join("images")
        .join(digest.strip_prefix("sha256:").expect("sha256 digest"))
        .join("rootfs.erofs")
}

/// Checks the files the test image's two layers leave, under `root`.
fn assert_busybox_tree(root: &Path, what: &str) {
    let busybox = root.join("bin/busybox");
    assert!(busybox.is_file(), "{what}: /bin/busybox exists");
    assert_eq!(
        fs::metadata(&busybox).unwrap().mode() & 0o7777,
        0o755,
        "{what}: busybox mode"
    );
    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("busybox"),
        "{what}: /bin/sh is a symlink to busybox"
    );
    assert!(
        fs::symlink_metadata(root.join("etc/unipod-whiteout-me")).is_err(),
        "{what}: layer 2's whiteout deleted /etc/unipod-whiteout-me"
    );
    let opaque: Vec<String> = fs::read_dir(root.join("opt/opaque"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        opaque,
        ["upper"],
        "{what}: the opaque dir hides layer 1's files"
    );
    assert_eq!(
        fs::read_to_string(root.join("etc/unipod-test-image")).unwrap(),
        "unipod test image (images/build-oci.sh)\n",
        "{what}"
    );
    assert_eq!(
        fs::metadata(root.join("tmp")).unwrap().mode() & 0o7777,
        0o1777,
        "{what}: /tmp keeps its sticky bit"
    );
    if nix::unistd::geteuid().is_root() {
        let nobody = fs::metadata(root.join("home/nobody/.profile")).unwrap();
        assert_eq!(
            (nobody.uid(), nobody.gid()),
            (65534, 65534),
            "{what}: ownership is kept"
        );
    }
}

/// Extracts `erofs` with fsck.erofs and checks its tree.
fn check_by_extracting(erofs: &Path, scratch: &Path) {
    let out = scratch.join("extracted");
    let _ = fs::remove_dir_all(&out);
    common::run_ok(
        Command::new("fsck.erofs")
            .arg(format!("--extract={}", out.display()))
            .arg(erofs),
    );
    assert_busybox_tree(
        &out,
        &format!("fsck.erofs --extract of {}", erofs.display()),
    );
}

/// Loop-mounts `erofs` read-only and checks its tree, if this host can.
fn check_by_mounting(erofs: &Path, scratch: &Path) {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED mounting {}: needs root", erofs.display());
        return;
    }
    let mnt = scratch.join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let out = Command::new("mount")
        .args(["-t", "erofs", "-o", "loop,ro"])
        .arg(erofs)
        .arg(&mnt)
        .output()
        .expect("mount runs");
    if !out.status.success() {
        eprintln!(
            "SKIPPED mounting {}: this host cannot mount erofs ({}); the fsck.erofs \
             extraction above checked the same files",
            erofs.display(),
            text(&out.stderr).trim()
        );
        return;
    }
    // Unmount even if a check fails.
    struct Umount<'a>(&'a Path);
    impl Drop for Umount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _umount = Umount(&mnt);
    assert_busybox_tree(&mnt, &format!("mount of {}", erofs.display()));
    let probe = mnt.join("etc/new-file");
    assert!(fs::write(&probe, "x").is_err(), "the mount is read-only");
    let busybox = fs::metadata(mnt.join("bin/busybox")).unwrap();
    let env = fs::metadata(mnt.join("usr/bin/env")).unwrap();
    assert_eq!(busybox.ino(), env.ino(), "/usr/bin/env is a hard link");
}

fn temp_dirs_in(state: &Path) -> Vec<String> {
    match fs::read_dir(state.join("images")) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".tmp-") || n.contains(".tmp"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn an_oci_layout_imports_lists_and_reimports_without_work() {
    let image = test_image();
    let scratch = temp_dir("images-layout");
    let state = scratch.join("state");

    let (stdout, stderr) = image_ok(&state, &["import", image.layout.to_str().unwrap()]);
    assert!(stderr.contains("[image] unpacking layer 1/2 ("), "{stderr}");
    assert!(stderr.contains("[image] unpacking layer 2/2 ("), "{stderr}");
    assert!(stderr.contains("[image] mkfs.erofs"), "{stderr}");
    assert!(stdout.contains("names:  busybox:latest"), "{stdout}");
    let digest = digest_of(&stdout);
    let erofs = rootfs(&state, &digest);
    assert!(erofs.is_file(), "{} exists", erofs.display());

    let (ls, _) = image_ok(&state, &["ls"]);
    let header = ls.lines().next().unwrap_or_default();
    for column in ["NAME", "DIGEST", "SIZE", "IMPORTED"] {
        assert!(header.contains(column), "{ls}");
    }
    let row = ls
        .lines()
        .find(|l| l.starts_with("busybox:latest "))
        .unwrap_or_else(|| panic!("busybox:latest is listed:\n{ls}"));
    assert!(row.contains(&digest[7..19]), "12-digit digest: {row}");
    assert!(row.contains("MiB"), "size: {row}");

    let mtime = fs::metadata(&erofs).unwrap().modified().unwrap();
    let (stdout, stderr) = image_ok(
        &state,
        &["import", image.layout.to_str().unwrap(), "--name", "bb:2"],
    );
    assert!(stderr.contains("is already present"), "{stderr}");
    assert!(!stderr.contains("unpacking"), "no work done: {stderr}");
    assert_eq!(digest_of(&stdout), digest);
    assert!(stdout.contains("bb:2"), "the new name is added: {stdout}");
    assert_eq!(
        fs::metadata(&erofs).unwrap().modified().unwrap(),
        mtime,
        "the erofs file was not rebuilt"
    );

    check_by_extracting(&erofs, &scratch);
    check_by_mounting(&erofs, &scratch);

    let (stdout, _) = image_ok(&state, &["rm", "bb:2", "docker.io/library/busybox"]);
    assert!(stdout.contains(&format!("deleted {digest}")), "{stdout}");
    assert!(!erofs.exists());
    assert_eq!(temp_dirs_in(&state), Vec::<String>::new());
    fs::remove_dir_all(&scratch).unwrap();
}

#[test]
fn tar_forms_of_the_image_import_to_the_same_files() {
    let image = test_image();
    let scratch = temp_dir("images-tars");
    let state = scratch.join("state");

    let (stdout, _) = image_ok(&state, &["import", image.layout.to_str().unwrap()]);
    let layout_digest = digest_of(&stdout);
    let layout_bytes = fs::read(rootfs(&state, &layout_digest)).unwrap();

    // The OCI layout as a tar: the same manifest, so the same digest, and
    // erofs is reproducible, so the same bytes (a fresh state dir makes the
    // import do the work again).
    let state2 = scratch.join("state2");
    let (stdout, stderr) = image_ok(&state2, &["import", image.oci_tar.to_str().unwrap()]);
    assert!(stderr.contains("unpacking layer 2/2"), "{stderr}");
    assert_eq!(digest_of(&stdout), layout_digest);
    assert!(
        fs::read(rootfs(&state2, &layout_digest)).unwrap() == layout_bytes,
        "the OCI tar gives a byte-identical erofs image"
    );

    // docker save's format has no manifest: another digest, same files.
    let (stdout, _) = image_ok(&state, &["import", image.docker_tar.to_str().unwrap()]);
    assert!(stdout.contains("names:  busybox:latest"), "{stdout}");
    let docker_digest = digest_of(&stdout);
    assert_ne!(docker_digest, layout_digest);
    check_by_extracting(&rootfs(&state, &docker_digest), &scratch);

    // busybox:latest moved to the docker image; the layout's is unnamed.
    let (ls, _) = image_ok(&state, &["ls"]);
    let named = |prefix: &str| ls.lines().find(|l| l.starts_with(prefix)).map(String::from);
    assert!(
        named("busybox:latest").is_some_and(|l| l.contains(&docker_digest[7..19])),
        "{ls}"
    );
    assert!(
        named("<none>").is_some_and(|l| l.contains(&layout_digest[7..19])),
        "{ls}"
    );
    fs::remove_dir_all(&scratch).unwrap();
}

#[test]
fn failed_imports_exit_1_name_the_problem_and_leave_nothing() {
    let image = test_image();
    let scratch = temp_dir("images-fail");
    let state = scratch.join("state");

    let missing = scratch.join("no-such-image");
    let out = image_cmd(&state, &["import", missing.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
    assert!(stderr.contains("no such file or directory"), "{stderr}");

    // A copy of the layout with one byte of its biggest blob (layer 1)
    // flipped.
    let copy = scratch.join("corrupt");
    common::run_ok(Command::new("cp").arg("-a").arg(&image.layout).arg(&copy));
    let blobs = copy.join("blobs/sha256");
    let biggest = fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let mut data = fs::read(&biggest).unwrap();
    let middle = data.len() / 2;
    data[middle] ^= 0x55;
    fs::write(&biggest, data).unwrap();
    let out = image_cmd(&state, &["import", copy.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let blob_name = biggest.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        stderr.contains(&format!("blobs/sha256/{blob_name}")),
        "{stderr}"
    );
    assert!(stderr.contains("layer 1/2"), "{stderr}");
    assert!(stderr.contains("corrupt"), "{stderr}");
    assert_eq!(
        temp_dirs_in(&state),
        Vec::<String>::new(),
        "no temp dirs left"
    );
    let (ls, _) = image_ok(&state, &["ls"]);
    assert_eq!(ls.lines().count(), 1, "nothing imported:\n{ls}");

    let out = image_cmd(&state, &["import"]);
    assert_eq!(out.status.code(), Some(2), "usage error");
    fs::remove_dir_all(&scratch).unwrap();
}
