//! End-to-end test of a stock Debian nginx image (images/build-nginx.sh) in
//! a manifest pod shaped like the Kubernetes docs' nginx Pod example.
//!
//! What it proves, on one pod VM:
//! - the image runs as Debian ships it: its config has no `PATH`, so
//!   `nginx` is found through the default PATH (`vmm/src/pod/spec.rs`);
//! - Debian's default site, which listens on `[::]:80` as well as `0.0.0.0:80`,
//!   starts (the guest kernel has IPv6) and serves HTTP on both pod IPs: the
//!   network has an IPv6 range (`--pod-cidr6`), so the pod is dual-stack;
//! - `status.podIPs` lists both addresses, IPv4 first, and `/etc/hosts` maps
//!   the hostname to each;
//! - `::1` works inside the pod: a busybox container beside nginx (the two
//!   share the guest's network namespace) fetches the page from `[::1]:80`.
//!
//! (That `eth0` has no IPv6 at all without a range is checked in
//! tests/config.rs.)
//!
//! The pod's bridge, tap and all traffic stay in a network namespace the
//! test creates ([`Netns`]); the pod is removed before the namespace goes.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::pod::{import_busybox, manifest, status, text, unipod, wait_for};
use common::{guest_artifact, shared_state_dir, skip_without_kvm_or_root, Netns};

const POD: &str = "nginx-e2e";
/// How long nginx may take to answer once its container runs.
const HTTP_BUDGET: Duration = Duration::from_secs(120);

/// The Kubernetes docs' nginx Pod, with our image name, plus a busybox
/// container to look at the pod from inside.
const MANIFEST: &str = "\
apiVersion: v1
kind: Pod
metadata:
  name: nginx-e2e
spec:
  containers:
  - name: nginx
    image: nginx:latest
    ports:
    - containerPort: 80
  - name: probe
    image: busybox
    command: [sleep, '3600']
";

/// Removes the pod when dropped (before the namespace its tap lives in).
struct PodGuard<'a>(&'a Path);

impl Drop for PodGuard<'_> {
    fn drop(&mut self) {
        let _ = unipod(self.0, "rm", &["-f", POD]);
    }
}

fn import_nginx(state: &Path) {
    let tar = guest_artifact("oci/nginx-oci.tar");
    let out = unipod(state, "image", &["import", tar.to_str().expect("utf-8")]);
    assert!(out.status.success(), "import nginx: {:?}", text(&out));
}

/// `unipod exec POD -c probe -- sh -c SCRIPT`.
fn probe(state: &Path, script: &str) -> Output {
    unipod(
        state,
        "exec",
        &[POD, "-c", "probe", "--", "sh", "-c", script],
    )
}

/// `GET /` from inside `ns`, retried (bounded) while nginx is starting.
fn http_get(ns: &Netns, addr: SocketAddr) -> String {
    ns.enter(|| {
        let deadline = Instant::now() + HTTP_BUDGET;
        loop {
            let attempt = (|| {
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
                s.set_read_timeout(Some(Duration::from_secs(30)))?;
                s.write_all(b"GET / HTTP/1.0\r\nHost: nginx\r\n\r\n")?;
                let mut reply = Vec::new();
                s.read_to_end(&mut reply)?;
                Ok::<_, std::io::Error>(String::from_utf8_lossy(&reply).into_owned())
            })();
            match attempt {
                Ok(reply) => return reply,
                Err(e) => {
                    assert!(Instant::now() < deadline, "GET http://{addr}/: {e}");
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    })
}

#[test]
fn debian_nginx_serves_on_both_pod_ips_and_on_ipv6_loopback() {
    let name = "debian_nginx_serves_on_both_pod_ips_and_on_ipv6_loopback";
    if skip_without_kvm_or_root(name) {
        return;
    }
    let state: PathBuf = shared_state_dir();
    import_busybox(&state);
    import_nginx(&state);
    let ns = Netns::new("nginx");
    let _ = unipod(&state, "rm", &["-f", POD]);
    let path = manifest(POD, MANIFEST);
    let out = ns
        .command(env!("CARGO_BIN_EXE_unipod"))
        .args(["run", "-d", "--state-dir"])
        .arg(&state)
        .args(["--bridge", "upt-nginx", "--pod-cidr", "10.231.30.0/24"])
        .args(["--pod-cidr6", "fd00:231:30::/64"])
        .args(["--unknown-timeout-secs", "180"])
        .arg("--kernel")
        .arg(guest_artifact("vmlinux"))
        .arg("--initrd")
        .arg(guest_artifact("initramfs.cpio"))
        .arg(&path)
        .output()
        .expect("unipod runs");
    let _pod = PodGuard(&state);
    assert!(out.status.success(), "unipod run: {:?}", text(&out));
    wait_for(&state, POD, "running both containers", |s| {
        let running =
            |i: usize| s["status"]["containerStatuses"][i]["state"]["running"].is_object();
        running(0) && running(1)
    });
    let s = status(&state, POD);
    let ip: Ipv4Addr = s["status"]["podIP"]
        .as_str()
        .expect("a pod IP")
        .parse()
        .expect("an IPv4 address");
    let ips: Vec<IpAddr> = s["status"]["podIPs"]
        .as_array()
        .expect("podIPs")
        .iter()
        .map(|p| {
            p["ip"]
                .as_str()
                .expect("an ip")
                .parse()
                .expect("an address")
        })
        .collect();
    // The same offset in both ranges.
    let ip6 = Ipv6Addr::new(0xfd00, 0x231, 0x30, 0, 0, 0, 0, u16::from(ip.octets()[3]));
    assert_eq!(ips, [IpAddr::from(ip), IpAddr::from(ip6)], "{s:#}");

    // From the node (the test's namespace) to each pod IP.
    for addr in &ips {
        let reply = http_get(&ns, SocketAddr::new(*addr, 80));
        assert!(reply.starts_with("HTTP/1.1 200 OK"), "{addr}: {reply}");
        assert!(reply.contains("Welcome to nginx!"), "{addr}: {reply}");
    }

    // Inside the pod, over IPv6 loopback and IPv4 loopback.
    for url in ["http://[::1]/", "http://127.0.0.1/"] {
        let out = probe(&state, &format!("wget -q -O- {url}"));
        assert!(
            out.status.success() && text(&out).0.contains("Welcome to nginx!"),
            "wget {url}: {}: {:?}",
            out.status,
            text(&out)
        );
    }

    // eth0 has the pod's IPv6 address, and the hostname maps to both IPs.
    let out = probe(&state, "cat /proc/net/if_inet6 /etc/hosts");
    let (stdout, _) = text(&out);
    assert!(out.status.success(), "{:?}", text(&out));
    let hex6: String = ip6.octets().iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with(&format!("{hex6} ")) && l.ends_with(" eth0")),
        "{ip6} on eth0:\n{stdout}"
    );
    for line in [format!("{ip}\t{POD}"), format!("{ip6}\t{POD}")] {
        assert!(stdout.lines().any(|l| l == line), "{line:?} in:\n{stdout}");
    }

    let (logs, _) = text(&unipod(&state, "logs", &[POD, "-c", "nginx"]));
    assert!(!logs.contains("[emerg]"), "nginx logged an error:\n{logs}");
}
