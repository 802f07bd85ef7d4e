use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::*;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::Interrupt;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("unipod-api-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    /// A file of `len` bytes in the directory.
    fn image(&self, name: &str, len: usize) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, vec![0xa5u8; len]).expect("write image");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `images` disks (attached) followed by `slots` empty slots.
fn disks(images: &[&Path], slots: usize) -> Disks {
    let interrupt = || Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    let attached = images
        .iter()
        .map(|p| Some(File::open(p).expect("open image")));
    let blocks = attached
        .chain(std::iter::repeat_with(|| None).take(slots))
        .enumerate()
        .map(|(i, image)| {
            let block = Block::new(&format!("unipod-disk{i}"), image, interrupt()).unwrap();
            Arc::new(Mutex::new(block))
        })
        .collect();
    Disks::from_blocks(blocks)
}

fn open(path: &Path) -> Vec<File> {
    vec![File::open(path).expect("open")]
}

#[test]
fn attach_fills_the_first_free_slots_in_order_then_runs_out() {
    let dir = TempDir::new("order");
    let first = dir.image("first.img", 4096);
    let second = dir.image("second.img", 1000);
    let d = disks(&[&first], 2);
    let req = ATTACH_DISK.as_bytes();
    assert_eq!(handle(req, open(&second), &d).expect("attached"), 1);
    assert_eq!(handle(req, open(&second), &d).expect("attached"), 2);
    match handle(req, open(&second), &d) {
        Err(RequestError::Attach(DeviceError::NoFreeSlot(3))) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_requests_attach_nothing() {
    let dir = TempDir::new("bad");
    let image = dir.image("ok.img", 512);
    let empty = dir.image("empty.img", 0);
    let d = disks(&[], 1);
    let req = ATTACH_DISK.as_bytes();
    let write_only = vec![File::options().write(true).open(&image).expect("open")];
    let two: Vec<File> = open(&image).into_iter().chain(open(&image)).collect();
    let cases: [(&[u8], Vec<File>, &str); 7] = [
        (b"DETACH-DISK\n", open(&image), "unknown request"),
        (b"ATTACH-DISK", open(&image), "unknown request"),
        (req, Vec::new(), "exactly one file descriptor"),
        (req, two, "exactly one file descriptor"),
        (req, open(&dir.0), "not a regular file"),
        (req, open(&empty), "is empty"),
        (req, write_only, "not open for reading"),
    ];
    for (request, fd, expected) in cases {
        let line = reply_line(&handle(request, fd, &d));
        assert!(
            line.starts_with("ERR ") && line.contains(expected) && line.ends_with('\n'),
            "{expected}: {line:?}"
        );
        assert_eq!(line.matches('\n').count(), 1, "one line: {line:?}");
    }
    // The slot is still free.
    assert_eq!(handle(req, open(&image), &d).expect("attached"), 0);
}

#[test]
fn replies_parse_back() {
    assert_eq!(parse_reply(&reply_line(&Ok(3))), Ok(3));
    let refused = reply_line(&Err(RequestError::Empty));
    assert_eq!(parse_reply(&refused), Err("the image is empty".to_string()));
    assert!(parse_reply("OK x\n").is_err());
    assert!(parse_reply("").unwrap_err().contains("malformed"));
}

/// Runs `client` on a thread against an [`ApiServer`] on an event loop
/// until it finishes, and returns what it returned.
fn with_server<T: Send + 'static>(
    dir: &TempDir,
    disks: Disks,
    client: impl FnOnce(PathBuf) -> T + Send + 'static,
) -> T {
    let sock = dir.0.join("api.sock");
    let server = ApiServer::bind(&sock, disks).expect("bind");
    let mut manager = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
    manager.add_subscriber(Arc::new(Mutex::new(server)));
    let path = sock.clone();
    let handle = std::thread::spawn(move || client(path));
    while !handle.is_finished() {
        manager.run_with_timeout(50).expect("event loop");
    }
    drop(manager);
    assert!(!sock.exists(), "the socket file is removed with the server");
    handle.join().expect("client")
}

#[test]
fn the_socket_attaches_an_image_sent_as_an_fd() {
    let dir = TempDir::new("socket");
    let image = dir.image("app.erofs", 8192);
    let index = with_server(&dir, disks(&[], 2), move |sock| {
        crate::pod::vmm_api::attach_disk(&sock, &image)
    });
    assert_eq!(index.expect("attached"), 0);
}

#[test]
fn the_socket_refuses_two_fds_and_a_full_vm() {
    let dir = TempDir::new("socket-refused");
    let image = dir.image("app.erofs", 512);
    let full = dir.image("full.erofs", 512);
    let replies = with_server(&dir, disks(&[&full], 0), move |sock| {
        let two_fds = {
            let stream = std::os::unix::net::UnixStream::connect(&sock).unwrap();
            let f = File::open(&image).unwrap();
            stream
                .send_with_fds(&[ATTACH_DISK.as_bytes()], &[f.as_raw_fd(), f.as_raw_fd()])
                .unwrap();
            let mut reply = String::new();
            std::io::Read::read_to_string(&mut &stream, &mut reply).unwrap();
            reply
        };
        let full = crate::pod::vmm_api::attach_disk(&sock, &image);
        (two_fds, full)
    });
    assert!(
        replies.0.contains("exactly one file descriptor"),
        "{:?}",
        replies.0
    );
    let full = replies.1.expect_err("no free slot");
    let msg = crate::error_chain::error_chain(&full, ": ");
    assert!(msg.contains("no free disk slot"), "{msg}");
}
