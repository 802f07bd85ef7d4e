//! kubectl's presentation of pod records: its padded tables and the text
//! of `describe`.
//!
//! # Design
//! Pure functions of a [`PodRecord`] (and the manifest, when it is still
//! there) and the time, so they are tested without a pod; `unipod get` and
//! `unipod describe` only read the records and print these.

use super::manifest::{self, ContainerSpec, PodManifest, VolumeSource};
use super::status::{
    format_map, human_duration, kubectl_status, parse_time, ContainerState, ContainerStatus,
    PodRecord,
};

/// A volume's lines in `describe`, as kubectl prints them.
fn volume_source(source: &VolumeSource) -> String {
    use manifest::{DownwardSource, FileSource};
    let sources = match source {
        VolumeSource::EmptyDir(e) => {
            let medium = match e.medium {
                manifest::StorageMedium::Memory => "Memory",
                manifest::StorageMedium::Default => "",
            };
            return format!(
                "    Type:       EmptyDir (a temporary directory that shares a pod's lifetime)\n    Medium:     {medium}\n"
            );
        }
        VolumeSource::Files(sources) => sources,
    };
    let mut out = String::new();
    if sources.len() != 1 {
        out.push_str(
            "    Type:       Projected (a volume that contains injected data from multiple sources)\n",
        );
    }
    for source in sources {
        match source {
            FileSource::Keys(k) => out.push_str(&format!(
                "    Type:       {} (a volume populated by a {})\n    Name:       {}\n    Optional:   {}\n",
                k.kind, k.kind, k.name, k.optional
            )),
            FileSource::Downward(files) => {
                out.push_str(
                    "    Type:       DownwardAPI (a volume populated by information about the pod)\n    Items:\n",
                );
                for f in files {
                    let what = match &f.source {
                        DownwardSource::Field(field) => field.to_string(),
                        DownwardSource::Resource(r) => resource_ref(r),
                    };
                    out.push_str(&format!("      {what} -> {}\n", f.path));
                }
            }
        }
    }
    out
}

/// An env var's value in `describe`: literal values as written, the
/// sources of the others (never a Secret's value).
fn env_source(source: &manifest::EnvSource) -> String {
    match source {
        manifest::EnvSource::Value(v) => v.clone(),
        manifest::EnvSource::Field(f) => format!(" (v1:{f})"),
        manifest::EnvSource::Resource(r) => resource_ref(r),
        manifest::EnvSource::Key(k) => format!(
            "<set to the key '{}' of {} '{}'>  Optional: {}",
            k.key,
            k.kind.lower(),
            k.name,
            k.optional
        ),
    }
}

fn resource_ref(r: &manifest::ResourceFieldRef) -> String {
    let which = if r.resource.limit {
        "limits"
    } else {
        "requests"
    };
    let what = if r.resource.cpu { "cpu" } else { "memory" };
    match &r.container {
        Some(c) => format!("{which}.{what} ({c})"),
        None => format!("{which}.{what}"),
    }
}

/// `rows` as kubectl prints them: each column padded to its widest cell
/// and three spaces.
pub fn table(rows: &[Vec<String>]) -> String {
    let widths = table_widths(rows);
    rows.iter().map(|row| table_line(row, &widths)).collect()
}

/// The width of each column of `rows`: its widest cell.
pub fn table_widths(rows: &[Vec<String>]) -> Vec<usize> {
    let cols = rows.first().map_or(0, Vec::len);
    (0..cols)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect()
}

/// One row of a table whose columns are `widths` wide, with its newline.
pub fn table_line(row: &[String], widths: &[usize]) -> String {
    let mut line = String::new();
    for (c, cell) in row.iter().enumerate() {
        if c + 1 == row.len() {
            line.push_str(cell);
        } else {
            let w = widths.get(c).copied().unwrap_or(0);
            line.push_str(&format!("{cell:<w$}   "));
        }
    }
    let mut line = line.trim_end().to_string();
    line.push('\n');
    line
}

fn limits_of(c: &ContainerSpec) -> Vec<String> {
    let l = &c.resources.limits;
    let mut out = Vec::new();
    if let Some(m) = l.cpu_millis {
        out.push(if m % 1000 == 0 {
            format!("cpu:     {}", m / 1000)
        } else {
            format!("cpu:     {m}m")
        });
    }
    if let Some(b) = l.memory_bytes {
        let mem = if b % (1 << 30) == 0 {
            format!("{}Gi", b >> 30)
        } else if b % (1 << 20) == 0 {
            format!("{}Mi", b >> 20)
        } else {
            b.to_string()
        };
        out.push(format!("memory:  {mem}"));
    }
    out
}

fn describe_state(out: &mut String, label: &str, state: &ContainerState) {
    match state {
        ContainerState::Waiting { reason, message } => {
            out.push_str(&format!(
                "    {label:<15} Waiting\n      Reason:       {reason}\n"
            ));
            if let Some(m) = message {
                out.push_str(&format!("      Message:      {m}\n"));
            }
        }
        ContainerState::Running { started_at } => {
            out.push_str(&format!(
                "    {label:<15} Running\n      Started:      {started_at}\n"
            ));
        }
        ContainerState::Terminated {
            exit_code,
            signal,
            reason,
            message,
            started_at,
            finished_at,
        } => {
            out.push_str(&format!(
                "    {label:<15} Terminated\n      Reason:       {reason}\n      Exit Code:    {exit_code}\n"
            ));
            if let Some(s) = signal {
                out.push_str(&format!("      Signal:       {s}\n"));
            }
            if let Some(m) = message {
                out.push_str(&format!("      Message:      {m}\n"));
            }
            if let Some(s) = started_at {
                out.push_str(&format!("      Started:      {s}\n"));
            }
            out.push_str(&format!("      Finished:     {finished_at}\n"));
        }
    }
}

/// A probe as `kubectl describe` shows it: `exec [cat /tmp/healthy]
/// delay=5s timeout=1s period=5s #success=1 #failure=3`.
fn describe_probe(p: &guest_agent::protocol::ProbeSpec) -> String {
    use guest_agent::protocol::ProbeHandler;
    let handler = match &p.handler {
        ProbeHandler::Exec { command } => format!("exec [{}]", command.join(" ")),
        ProbeHandler::HttpGet {
            host,
            port,
            path,
            https,
            ..
        } => format!(
            "http-get {}://{}:{port}{path}",
            if *https { "https" } else { "http" },
            host.as_deref().unwrap_or("")
        ),
        ProbeHandler::Grpc { port, service, .. } if service.is_empty() => {
            format!("grpc <pod>:{port}")
        }
        ProbeHandler::Grpc { port, service, .. } => format!("grpc <pod>:{port} {service}"),
        ProbeHandler::TcpSocket { host, port } => {
            format!("tcp-socket {}:{port}", host.as_deref().unwrap_or(""))
        }
    };
    format!(
        "{handler} delay={}s timeout={}s period={}s #success={} #failure={}",
        p.initial_delay_secs,
        p.timeout_secs,
        p.period_secs,
        p.success_threshold,
        p.failure_threshold
    )
}

fn describe_containers(
    out: &mut String,
    title: &str,
    statuses: &[ContainerStatus],
    specs: &[ContainerSpec],
) {
    if statuses.is_empty() {
        return;
    }
    out.push_str(&format!("{title}:\n"));
    for c in statuses {
        out.push_str(&format!("  {}:\n", c.name));
        out.push_str(&format!("    Image:          {}\n", c.image));
        out.push_str(&format!("    Image ID:       {}\n", c.image_id));
        let spec = specs.iter().find(|s| s.name == c.name);
        if let Some(s) = spec {
            for p in &s.ports {
                let host = p
                    .host_port
                    .map_or(String::new(), |h| format!(" (host port {h})"));
                out.push_str(&format!(
                    "    Port:           {}/{}{host}\n",
                    p.container_port,
                    match p.protocol {
                        manifest::Protocol::Tcp => "TCP",
                        manifest::Protocol::Udp => "UDP",
                    }
                ));
            }
            if !s.command.is_empty() {
                out.push_str(&format!("    Command:        {}\n", s.command.join(" ")));
            }
            if !s.args.is_empty() {
                out.push_str(&format!("    Args:           {}\n", s.args.join(" ")));
            }
        }
        describe_state(out, "State:", &c.state);
        if let Some(last) = &c.last_state {
            describe_state(out, "Last State:", last);
        }
        out.push_str(&format!(
            "    Ready:          {}\n    Restart Count:  {}\n",
            if c.ready { "True" } else { "False" },
            c.restart_count
        ));
        if let Some(s) = spec {
            let limits = limits_of(s);
            if !limits.is_empty() {
                out.push_str("    Limits:\n");
                for l in limits {
                    out.push_str(&format!("      {l}\n"));
                }
            }
            for (kind, probe) in s.probes.probes.iter() {
                let label = format!("{}:", kind.title());
                out.push_str(&format!("    {label:<16}{}\n", describe_probe(probe)));
            }
            if !s.env_from.is_empty() {
                out.push_str("    Environment Variables from:\n");
                for f in &s.env_from {
                    let prefix = if f.prefix.is_empty() {
                        String::new()
                    } else {
                        format!(" with prefix '{}'", f.prefix)
                    };
                    out.push_str(&format!(
                        "      {}  {}{prefix}  Optional: {}\n",
                        f.name, f.kind, f.optional
                    ));
                }
            }
            if !s.env.is_empty() {
                out.push_str("    Environment:\n");
                for e in &s.env {
                    out.push_str(&format!("      {}:  {}\n", e.name, env_source(&e.source)));
                }
            }
            if !s.volume_mounts.is_empty() {
                out.push_str("    Mounts:\n");
                for m in &s.volume_mounts {
                    let ro = if m.read_only { "ro" } else { "rw" };
                    out.push_str(&format!(
                        "      {} from {} ({ro})\n",
                        m.mount_path.display(),
                        m.name
                    ));
                }
            }
        }
    }
}

/// The text of `unipod describe`.
pub fn describe_text(r: &PodRecord, manifest: Option<&PodManifest>, now: i64) -> String {
    let mut out = String::new();
    let line = |out: &mut String, k: &str, v: &str| out.push_str(&format!("{k:<14}{v}\n"));
    line(&mut out, "Name:", &r.name);
    line(&mut out, "UID:", &r.uid);
    line(&mut out, "Manifest:", &r.manifest.display().to_string());
    if let Some(t) = &r.status.start_time {
        line(&mut out, "Start Time:", t);
    }
    for (title, map) in [
        ("Labels:", manifest.map(|m| &m.labels)),
        ("Annotations:", manifest.map(|m| &m.annotations)),
    ] {
        let values = map.map_or(vec!["<none>".into()], format_map);
        for (i, v) in values.iter().enumerate() {
            line(&mut out, if i == 0 { title } else { "" }, v);
        }
    }
    line(
        &mut out,
        "Status:",
        &kubectl_status(&r.status, r.shown_phase(), &r.sidecars),
    );
    line(&mut out, "Phase:", &r.shown_phase().to_string());
    if let Some(reason) = &r.status.reason {
        line(&mut out, "Reason:", reason);
    }
    if let Some(message) = &r.status.message {
        line(&mut out, "Message:", message);
    }
    if !r.supervisor_alive() && !r.status.phase.is_terminal() {
        line(
            &mut out,
            "Message:",
            &format!("its supervisor is gone; 'unipod rm {}' cleans up", r.name),
        );
    }
    line(
        &mut out,
        "IP:",
        r.status.pod_ip.as_deref().unwrap_or("<none>"),
    );
    if !r.startup.is_empty() {
        line(&mut out, "Startup:", &r.startup.summary());
    }
    if let Some(m) = manifest {
        line(&mut out, "Restart:", &m.restart_policy.to_string());
        line(
            &mut out,
            "Grace Period:",
            &format!("{}s", m.termination_grace_period.as_secs()),
        );
    }
    let (init_specs, app_specs) = manifest.map_or((&[][..], &[][..]), |m| {
        (&m.init_containers[..], &m.containers[..])
    });
    describe_containers(
        &mut out,
        "Init Containers",
        &r.status.init_container_statuses,
        init_specs,
    );
    describe_containers(
        &mut out,
        "Containers",
        &r.status.container_statuses,
        app_specs,
    );
    out.push_str("Conditions:\n");
    let mut rows = vec![vec!["  Type".to_string(), "Status".to_string()]];
    for c in &r.status.conditions {
        rows.push(vec![format!("  {}", c.kind), c.status.clone()]);
    }
    out.push_str(&table(&rows));
    if let Some(m) = manifest {
        if !m.volumes.is_empty() {
            out.push_str("Volumes:\n");
            for v in &m.volumes {
                out.push_str(&format!("  {}:\n{}", v.name, volume_source(&v.source)));
            }
        }
    }
    if r.events.is_empty() {
        out.push_str("Events:       <none>\n");
    } else {
        out.push_str("Events:\n");
        let mut rows = vec![["  Type", "Reason", "Age", "From", "Message"]
            .map(String::from)
            .to_vec()];
        rows.push(
            ["  ----", "------", "----", "----", "-------"]
                .map(String::from)
                .to_vec(),
        );
        for e in &r.events {
            let age = parse_time(&e.time).map_or("<unknown>".into(), |t| human_duration(now - t));
            rows.push(vec![
                format!("  {}", e.kind),
                e.reason.clone(),
                age,
                "unipod".into(),
                e.message.clone(),
            ]);
        }
        out.push_str(&table(&rows));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_are_described_as_kubectl_describes_them() {
        use guest_agent::protocol::{ProbeHandler, ProbeSpec};
        let spec = |handler| ProbeSpec {
            handler,
            initial_delay_secs: 5,
            period_secs: 5,
            timeout_secs: 1,
            success_threshold: 1,
            failure_threshold: 3,
        };
        let exec = spec(ProbeHandler::Exec {
            command: vec!["cat".into(), "/tmp/healthy".into()],
        });
        assert_eq!(
            describe_probe(&exec),
            "exec [cat /tmp/healthy] delay=5s timeout=1s period=5s #success=1 #failure=3"
        );
        let http = spec(ProbeHandler::HttpGet {
            host: None,
            port: 8080,
            path: "/healthz".into(),
            headers: Vec::new(),
            https: false,
        });
        assert!(describe_probe(&http).starts_with("http-get http://:8080/healthz delay=5s"));
        let https = spec(ProbeHandler::HttpGet {
            host: Some("10.0.0.2".into()),
            port: 8443,
            path: "/".into(),
            headers: Vec::new(),
            https: true,
        });
        assert!(describe_probe(&https).starts_with("http-get https://10.0.0.2:8443/ delay=5s"));
        let grpc = spec(ProbeHandler::Grpc {
            host: Some("10.0.0.2".into()),
            port: 9090,
            service: "echo".into(),
        });
        assert!(describe_probe(&grpc).starts_with("grpc <pod>:9090 echo delay=5s"));
        let tcp = spec(ProbeHandler::TcpSocket {
            host: Some("10.0.0.1".into()),
            port: 53,
        });
        assert!(describe_probe(&tcp).starts_with("tcp-socket 10.0.0.1:53 delay=5s"));
    }

    #[test]
    fn tables_pad_columns_like_kubectl() {
        let rows = vec![
            vec!["NAME".to_string(), "READY".into(), "AGE".into()],
            vec!["web-long".to_string(), "1/1".into(), "5s".into()],
        ];
        assert_eq!(
            table(&rows),
            "NAME       READY   AGE\nweb-long   1/1     5s\n"
        );
    }
}
