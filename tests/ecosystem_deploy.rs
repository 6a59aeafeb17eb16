//! Issue 7: the deployment files in `deploy/`, checked by the real tools where the
//! machine has them and by their documented fields where no cluster or engine exists:
//! `promtool check config`, `amtool check-config` and `amtool config routes test`,
//! `systemd-analyze verify` and `security`, `docker-compose config`, the Dockerfile's
//! HEALTHCHECK command run against a real sidecar, and `stallwatch check-config` on every
//! config file the deployments ship.

mod common;
mod ecosystem_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Launch, Sidecar};
use ecosystem_support::*;
use serde_json::Value;

/// The data dir every deployment mounts its state volume at.
const STATE_DIR: &str = "/var/lib/stallwatch";

fn stallwatch_check_config(path: &Path) {
    let ran = run(Command::new(env!("CARGO_BIN_EXE_stallwatch"))
        .arg("check-config")
        .arg(path));
    assert!(
        ran.status.success(),
        "stallwatch check-config {} failed:\n{}{}",
        path.display(),
        ran.stdout,
        ran.stderr
    );
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_file(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

// ---- Prometheus and Alertmanager ----------------------------------------------------------

#[test]
fn prometheus_config_passes_promtool_and_loads_the_rules() {
    let ran = run(Command::new(promtool())
        .args(["check", "config"])
        .arg(repo_file("deploy/prometheus.yml")));
    ran.expect_success();
    // promtool also checks the rule files it loads: the relative path must resolve.
    assert!(
        ran.stdout.contains("1 rule files found") && ran.stdout.contains("stallwatch.rules.yml"),
        "{}",
        ran.stdout
    );
    let cfg = yaml(&repo_file("deploy/prometheus.yml"));
    let jobs: Vec<&str> = cfg["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|j| j["job_name"].as_str())
        .collect();
    assert!(
        jobs.contains(&"stallwatch"),
        "the rules expect job=\"stallwatch\"; jobs are {jobs:?}"
    );
    let rule_file = cfg["rule_files"][0].as_str().unwrap();
    assert_eq!(
        repo_file("deploy")
            .join(rule_file)
            .canonicalize()
            .expect("rule file"),
        repo_file("alerts/stallwatch.rules.yml")
            .canonicalize()
            .unwrap()
    );
    assert!(
        !cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn alertmanager_config_passes_amtool_and_routes_every_severity_to_the_phone() {
    let config = repo_file("deploy/alertmanager.yml");
    let ran = run(Command::new(amtool()).arg("check-config").arg(&config));
    ran.expect_success();
    assert!(ran.stdout.contains("SUCCESS"), "{}", ran.stdout);

    let route = |labels: &[&str]| -> String {
        let ran = run(Command::new(amtool())
            .args(["config", "routes", "test"])
            .arg(format!("--config.file={}", config.display()))
            .args(labels));
        ran.expect_success();
        ran.stdout.trim().to_string()
    };
    assert_eq!(
        route(&["severity=page", "alertname=StallwatchFreezeRecorded"]),
        "phone-urgent"
    );
    assert_eq!(
        route(&["severity=warning", "alertname=StallwatchWallClockStep"]),
        "phone"
    );

    // Every receiver a rule's severity reaches delivers somewhere (a webhook to ntfy).
    let am = yaml(&config);
    for rule in rules().into_iter().filter(|r| r.alert) {
        let severity = rule.json["labels"]["severity"].as_str().unwrap();
        let receiver = route(&[
            &format!("severity={severity}"),
            &format!("alertname={}", rule.name),
        ]);
        let r = am["receivers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == receiver.as_str())
            .unwrap_or_else(|| panic!("{}: routed to unknown receiver {receiver}", rule.name));
        let url = r["webhook_configs"][0]["url"].as_str().unwrap_or("");
        assert!(
            url.starts_with("https://") && url.contains("tpl=1"),
            "{}: receiver {receiver} has no ntfy webhook: {r}",
            rule.name
        );
    }
    // Pages break through: ntfy priority 5 for the page receiver.
    let urgent = am["receivers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "phone-urgent")
        .unwrap();
    assert!(urgent["webhook_configs"][0]["url"]
        .as_str()
        .unwrap()
        .contains("p=5"));
}

// ---- Dockerfile ---------------------------------------------------------------------------

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn dockerfile_instructions() -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read("deploy/Dockerfile").lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(body) = t.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
        } else {
            current.push_str(t);
            if !current.trim().is_empty() {
                out.push(current.trim().to_string());
            }
            current.clear();
        }
    }
    out
}

#[test]
fn dockerfile_is_multi_stage_non_root_with_volume_and_healthcheck() {
    let ins = dockerfile_instructions();
    let froms: Vec<&String> = ins.iter().filter(|i| i.starts_with("FROM ")).collect();
    assert!(froms.len() >= 2, "not multi-stage: {froms:?}");
    assert!(
        froms[0].starts_with("FROM rust:") && froms[0].ends_with(" AS builder"),
        "{}",
        froms[0]
    );
    let last_from = ins.iter().rposition(|i| i.starts_with("FROM ")).unwrap();
    assert!(
        ins[last_from].starts_with("FROM debian:") && ins[last_from].ends_with("-slim"),
        "runtime is not debian-slim: {}",
        ins[last_from]
    );
    let runtime = &ins[last_from..];
    let user = runtime
        .iter()
        .rfind(|i| i.starts_with("USER "))
        .expect("the runtime stage sets USER");
    let who = user["USER ".len()..].split(':').next().unwrap();
    assert!(who != "root" && who != "0", "runs as root: {user}");
    assert!(runtime.iter().any(|i| i.starts_with("HEALTHCHECK ")));
    assert!(runtime
        .iter()
        .any(|i| i.starts_with("VOLUME ") && i.contains(STATE_DIR)));
    assert!(runtime.iter().any(|i| i == "EXPOSE 9847"));
    let entry = runtime
        .iter()
        .find(|i| i.starts_with("ENTRYPOINT "))
        .unwrap();
    let copied = runtime
        .iter()
        .find(|i| i.starts_with("COPY --from=builder "))
        .unwrap();
    let binary = copied.split_whitespace().last().unwrap();
    assert!(entry.contains(binary), "{entry} does not run {binary}");
    // The build context: the dockerignore lets through exactly what the build copies,
    // and the crate needs nothing else (no build script, no files included from outside src/).
    let ignore = read("deploy/Dockerfile.dockerignore");
    for needed in ["!Cargo.toml", "!Cargo.lock", "!src/"] {
        assert!(
            ignore.lines().any(|l| l.trim() == needed),
            "dockerignore lacks {needed}"
        );
    }
    for i in ins
        .iter()
        .filter(|i| i.starts_with("COPY ") && !i.contains("--from="))
    {
        for src in i
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .split_last()
            .unwrap()
            .1
        {
            let src = src.trim_end_matches('/');
            assert!(
                ignore
                    .lines()
                    .any(|l| l.trim().trim_start_matches('!').trim_end_matches('/') == src),
                "{i}: {src} is excluded by Dockerfile.dockerignore"
            );
        }
    }
    assert!(
        !repo_file("build.rs").exists(),
        "a build.rs must be copied into the image"
    );
    let manifest = read("Cargo.toml");
    assert!(
        !manifest.contains("build ="),
        "Cargo.toml names a build script"
    );
}

/// The HEALTHCHECK command, run as Docker would (bash from the runtime image), answers 0
/// for a live sidecar and non-zero for a stopped (frozen) and a dead one.
#[test]
fn dockerfile_healthcheck_command_tells_healthy_from_frozen_and_dead() {
    let ins = dockerfile_instructions();
    let hc = ins.iter().find(|i| i.starts_with("HEALTHCHECK ")).unwrap();
    let json = &hc[hc.find("CMD [").expect("HEALTHCHECK CMD in exec form") + 4..];
    let argv: Vec<String> = serde_json::from_str(json).expect("CMD is a JSON array");
    assert_eq!(
        argv[0], "bash",
        "the slim image has bash, not curl: {argv:?}"
    );
    let timeout_secs: u64 = hc
        .split_whitespace()
        .find_map(|w| w.strip_prefix("--timeout="))
        .and_then(|t| t.strip_suffix('s'))
        .and_then(|t| t.parse().ok())
        .expect("HEALTHCHECK --timeout=Ns");

    let dir = tempfile::tempdir().unwrap();
    let mut sidecar = Sidecar::start_with(dir.path(), &Launch::default());
    let port = sidecar.addr.port().to_string();
    let check = || {
        let args: Vec<String> = argv.iter().map(|a| a.replace("9847", &port)).collect();
        // Docker enforces --timeout by killing the check; so does coreutils timeout.
        run(Command::new("timeout")
            .arg(timeout_secs.to_string())
            .args(&args))
        .status
    };
    assert!(check().success(), "healthy sidecar reported unhealthy");
    sidecar.signal(libc::SIGSTOP);
    let frozen = check();
    sidecar.signal(libc::SIGCONT);
    assert!(!frozen.success(), "a stopped sidecar reported healthy");
    assert!(
        check().success(),
        "the sidecar did not recover after SIGCONT"
    );
    sidecar.kill_hard();
    assert!(!check().success(), "a dead sidecar reported healthy");
}

// ---- Fly.io -------------------------------------------------------------------------------

#[test]
fn fly_toml_keeps_state_on_a_volume_checks_9847_and_explains_auto_stop() {
    let text = read("deploy/fly.toml");
    let fly: toml::Value = toml::from_str(&text).expect("fly.toml is TOML");
    assert_eq!(fly["mounts"]["destination"].as_str(), Some(STATE_DIR));
    assert!(fly["mounts"]["source"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    assert_eq!(fly["metrics"]["port"].as_integer(), Some(9847));
    assert_eq!(fly["metrics"]["path"].as_str(), Some("/metrics"));
    let checks = fly["checks"].as_table().expect("[checks]");
    assert!(
        checks.values().any(|c| c["port"].as_integer() == Some(9847)
            && c["path"].as_str() == Some("/healthz")
            && c["type"].as_str() == Some("http")),
        "no HTTP check of /healthz on 9847: {checks:?}"
    );
    let http = &fly["http_service"];
    assert_eq!(http["auto_stop_machines"].as_str(), Some("off"));
    assert!(http["min_machines_running"].as_integer().unwrap_or(0) >= 1);
    // 9847 is never published: no [[services]] entry serves it.
    for s in fly
        .get("services")
        .and_then(|s| s.as_array())
        .into_iter()
        .flatten()
    {
        assert_ne!(
            s["internal_port"].as_integer(),
            Some(9847),
            "9847 exposed publicly"
        );
    }
    // The note on why auto_stop_machines matters is there.
    for needle in [
        "auto_stop_machines",
        "reboot",
        "freeze",
        "suspend",
        "vm_pause",
    ] {
        assert!(
            text.contains(needle),
            "fly.toml's notes do not mention {needle}"
        );
    }
}

// ---- docker compose -----------------------------------------------------------------------

/// `docker compose` (the v2 plugin) if the machine has it, else Debian's `docker-compose`.
fn compose() -> Vec<PathBuf> {
    if let Some(docker) = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("docker"))
            .find(|p| p.is_file())
    }) {
        if run(Command::new(&docker).args(["compose", "version"]))
            .status
            .success()
        {
            return vec![docker, PathBuf::from("compose")];
        }
    }
    vec![tool("docker-compose", "docker-compose")]
}

#[test]
fn compose_file_is_accepted_and_provisions_grafana_on_first_start() {
    let file = repo_file("deploy/docker-compose.yml");
    let argv = compose();
    let ran = run(Command::new(&argv[0])
        .args(&argv[1..])
        .arg("-f")
        .arg(&file)
        .arg("config"));
    ran.expect_success();

    let c = yaml(&file);
    let services = c["services"].as_object().expect("services");
    for s in ["app", "stallwatch", "prometheus", "alertmanager", "grafana"] {
        assert!(services.contains_key(s), "no {s} service");
    }
    let deploy = repo_file("deploy");
    // Host paths of bind mounts exist; returns (host, container) pairs of a service.
    let mounts = |svc: &str| -> Vec<(String, String)> {
        services[svc]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| {
                let parts: Vec<&str> = v.as_str().unwrap().split(':').collect();
                (parts[0].to_string(), parts[1].to_string())
            })
            .collect()
    };
    for svc in services.keys() {
        for (host, _) in mounts(svc) {
            if host.starts_with('.') {
                assert!(deploy.join(&host).exists(), "{svc}: {host} does not exist");
            }
        }
    }
    // stallwatch: built from deploy/Dockerfile, state on a named volume, a valid config.
    let sw = &services["stallwatch"];
    assert_eq!(sw["build"]["dockerfile"], "deploy/Dockerfile");
    assert_eq!(
        deploy
            .join(sw["build"]["context"].as_str().unwrap())
            .canonicalize()
            .unwrap(),
        repo().canonicalize().unwrap()
    );
    let sw_mounts = mounts("stallwatch");
    assert!(sw_mounts
        .iter()
        .any(|(h, c)| !h.starts_with('.') && c == STATE_DIR));
    let config_arg = sw["command"]
        .as_array()
        .unwrap()
        .windows(2)
        .find(|w| w[0] == "--config")
        .map(|w| w[1].as_str().unwrap().to_string())
        .expect("stallwatch runs with --config");
    let (host_config, _) = sw_mounts
        .iter()
        .find(|(_, c)| *c == config_arg)
        .expect("the config file is mounted");
    stallwatch_check_config(&deploy.join(host_config));
    // Prometheus: prometheus.yml's relative rule path resolves inside the container too.
    let prom = mounts("prometheus");
    assert!(prom
        .iter()
        .any(|(h, c)| h == "./prometheus.yml" && c == "/etc/prometheus/prometheus.yml"));
    assert!(prom
        .iter()
        .any(|(h, c)| h == "../alerts" && c == "/etc/alerts"));
    assert!(mounts("alertmanager")
        .iter()
        .any(|(h, _)| h == "./alertmanager.yml"));
    // Grafana: the provider's path holds every dashboard, the data source's uid is the
    // dashboards' default $datasource.
    let graf = mounts("grafana");
    let provider = yaml(&repo_file(
        "deploy/grafana/provisioning/dashboards/stallwatch.yml",
    ));
    let dash_dir = provider["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    for (path, _) in dashboards() {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            graf.iter()
                .any(|(h, c)| *h == format!("../dashboards/{name}")
                    && *c == format!("{dash_dir}/{name}")),
            "dashboards/{name} is not mounted into {dash_dir}"
        );
    }
    let datasources = yaml(&repo_file(
        "deploy/grafana/provisioning/datasources/prometheus.yml",
    ));
    let ds = &datasources["datasources"][0];
    assert_eq!(ds["type"], "prometheus");
    for (path, d) in dashboards() {
        let var = d["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "datasource")
            .unwrap();
        assert_eq!(var["current"]["value"], ds["uid"], "{}", path.display());
    }
    for provisioned in ["datasources", "dashboards"] {
        assert!(graf.iter().any(
            |(h, c)| *h == format!("./grafana/provisioning/{provisioned}")
                && *c == format!("/etc/grafana/provisioning/{provisioned}")
        ));
    }
}

// ---- systemd ------------------------------------------------------------------------------

#[test]
fn systemd_unit_passes_verify_and_is_hardened() {
    let analyze = tool("systemd-analyze", "systemd");
    let text = read("deploy/stallwatch.service");
    for needle in [
        "DynamicUser=yes",
        "StateDirectory=stallwatch",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "RestartPreventExitStatus=2",
        "--data-dir ${STATE_DIRECTORY}",
    ] {
        assert!(text.contains(needle), "the unit lacks {needle}");
    }
    // verify checks that ExecStart's binary exists: point it at the one Cargo built.
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("stallwatch.service");
    std::fs::write(
        &unit,
        text.replace(
            "/usr/local/bin/stallwatch",
            env!("CARGO_BIN_EXE_stallwatch"),
        ),
    )
    .unwrap();
    let ran = run(Command::new(&analyze).arg("verify").arg(&unit));
    assert!(
        ran.status.success() && ran.stdout.trim().is_empty() && ran.stderr.trim().is_empty(),
        "systemd-analyze verify complained:\n{}{}",
        ran.stdout,
        ran.stderr
    );
    let ran = run(Command::new(&analyze)
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit));
    ran.expect_success();
    let all = format!("{}{}", ran.stdout, ran.stderr);
    let exposure: f64 = all
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for stallwatch.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{all}"));
    assert!(
        exposure <= 2.0,
        "systemd-analyze security rates the unit {exposure} (want <= 2.0, \"OK\"):\n{all}"
    );
}

// ---- Kubernetes ---------------------------------------------------------------------------

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

#[test]
fn kubernetes_sidecar_has_probes_resources_state_and_a_valid_config() {
    let docs = yaml_documents(&repo_file("deploy/kubernetes/sidecar.yaml"));
    let kind = |k: &str| {
        docs.iter()
            .find(|d| d["kind"] == k)
            .unwrap_or_else(|| panic!("no {k} in sidecar.yaml"))
    };
    let deployment = kind("Deployment");
    assert_eq!(deployment["apiVersion"], "apps/v1");
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(
        deployment["spec"]["strategy"]["type"], "Recreate",
        "a ReadWriteOnce state volume needs Recreate"
    );
    let pod = &deployment["spec"]["template"]["spec"];
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (k, v) in deployment["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&labels[k], v, "the selector does not match the pod labels");
    }
    container(pod, "app");
    let sw = container(pod, "stallwatch");
    let port = sw["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["containerPort"] == 9847)
        .expect("container port 9847");
    let port_name = port["name"].as_str().unwrap();
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &sw[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert!(
            get["port"] == port_name || get["port"] == 9847,
            "{probe} port {}",
            get["port"]
        );
    }
    let res = &sw["resources"];
    for (section, key) in [
        ("requests", "cpu"),
        ("requests", "memory"),
        ("limits", "memory"),
    ] {
        assert!(
            res[section][key].is_string(),
            "resources.{section}.{key} missing"
        );
    }
    let sc = &sw["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert!(pod["securityContext"]["runAsNonRoot"] == true || sc["runAsNonRoot"] == true);
    // State on the PVC, at the data dir of the config.
    let mounts = sw["volumeMounts"].as_array().unwrap();
    let state = mounts
        .iter()
        .find(|m| m["mountPath"] == STATE_DIR)
        .expect("state mount");
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == state["name"])
        .unwrap();
    let claim = volume["persistentVolumeClaim"]["claimName"]
        .as_str()
        .expect("a PVC");
    assert_eq!(kind("PersistentVolumeClaim")["metadata"]["name"], claim);
    // The app's data reaches the sidecar read-only.
    assert!(mounts
        .iter()
        .any(|m| m["name"] == "app-data" && m["readOnly"] == true));
    // The config file the args name is the ConfigMap's, and it is valid.
    let args: Vec<&str> = sw["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let config_path = args[args.iter().position(|a| *a == "--config").unwrap() + 1];
    let (dir, file) = config_path.rsplit_once('/').unwrap();
    let config_mount = mounts
        .iter()
        .find(|m| m["mountPath"] == dir)
        .expect("config mount");
    let cm_volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == config_mount["name"])
        .unwrap();
    let cm = kind("ConfigMap");
    assert_eq!(cm_volume["configMap"]["name"], cm["metadata"]["name"]);
    let toml_text = cm["data"][file]
        .as_str()
        .expect("the config in the ConfigMap");
    assert!(toml_text.contains(&format!("data_dir = \"{STATE_DIR}\"")));
    let tmp = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(tmp.path(), toml_text).unwrap();
    stallwatch_check_config(tmp.path());
}

// ---- references a container actually has (issue 16 item 3) --------------------------------

/// The stallwatch configs the container deployments ship: every `.toml` under `deploy/`
/// but Fly's own `fly.toml`, every ConfigMap's `*.toml` in `deploy/kubernetes/`, and any
/// `.toml` beside a Dockerfile under `examples/` (a worked container example).
fn container_configs() -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&repo_file("deploy"), &mut files);
    walk(&repo_file("examples"), &mut files);
    files.sort();
    let mut configs = Vec::new();
    for path in files {
        let rel = path
            .strip_prefix(repo_file(""))
            .unwrap()
            .display()
            .to_string();
        let name = path.file_name().unwrap().to_str().unwrap();
        let in_container_dir =
            rel.starts_with("deploy/") || path.parent().unwrap().join("Dockerfile").is_file();
        if name.ends_with(".toml") && name != "fly.toml" && in_container_dir {
            configs.push((rel, std::fs::read_to_string(&path).unwrap()));
        } else if rel.starts_with("deploy/kubernetes/") && name.ends_with(".yaml") {
            for doc in yaml_documents(&path) {
                if doc["kind"] != "ConfigMap" {
                    continue;
                }
                for (key, value) in doc["data"].as_object().into_iter().flatten() {
                    if key.ends_with(".toml") {
                        configs.push((
                            format!("{rel} ConfigMap {key}"),
                            value.as_str().unwrap().to_string(),
                        ));
                    }
                }
            }
        }
    }
    configs
}

/// What is wrong with a container config's `freeze.references`: a local clock (`rtc`,
/// `ptp:`), which a container rarely sees, is down from the first read and fires
/// StallwatchReferenceClockDown on a healthy start. No key (the machine's own, discovered)
/// or network references only are fine.
fn container_reference_problem(toml_text: &str) -> Option<String> {
    let doc: toml::Value = toml::from_str(toml_text).expect("a TOML config");
    let refs = doc.get("freeze")?.get("references")?.as_array()?;
    let local: Vec<&str> = refs
        .iter()
        .filter_map(|r| r.as_str())
        .filter(|r| *r == "rtc" || r.starts_with("ptp:"))
        .collect();
    (!local.is_empty()).then(|| {
        format!("references {local:?} name a local clock a container may not have; leave the key out (discovery) or use sntp:/http_date:")
    })
}

#[test]
fn container_configs_use_only_references_the_container_has() {
    // The check itself fails on what compose shipped before.
    assert!(container_reference_problem("[freeze]\nreferences = [\"rtc\"]\n").is_some());
    assert!(container_reference_problem("[freeze]\nreferences = [\"ptp:/dev/ptp0\"]\n").is_some());
    assert!(container_reference_problem("[freeze]\nmin = \"2s\"\n").is_none());
    assert!(container_reference_problem("[freeze]\nreferences = [\"sntp:a:123\"]\n").is_none());

    let configs = container_configs();
    let names: Vec<&str> = configs.iter().map(|(n, _)| n.as_str()).collect();
    for must in [
        "deploy/stallwatch.toml",
        "deploy/kubernetes/sidecar.yaml ConfigMap stallwatch.toml",
    ] {
        assert!(names.contains(&must), "{must} not found among {names:?}");
    }
    for (name, text) in &configs {
        if let Some(problem) = container_reference_problem(text) {
            panic!("{name}: {problem}");
        }
    }

    // A healthy start with each config's [freeze] table (its sources need the app's
    // volume): no reference is down, so StallwatchReferenceClockDown
    // (`stallwatch_reference_up == 0`) has nothing to fire on, and no built-in alert fires.
    for (name, text) in &configs {
        let doc: toml::Value = toml::from_str(text).unwrap();
        let mut only = toml::value::Table::new();
        if let Some(freeze) = doc.get("freeze") {
            only.insert("freeze".into(), freeze.clone());
        }
        let data = tempfile::tempdir().unwrap();
        let sidecar = Sidecar::start_with(
            data.path(),
            &Launch {
                config: Some(toml::to_string(&toml::Value::Table(only)).unwrap()),
                ..Launch::default()
            },
        );
        std::thread::sleep(std::time::Duration::from_secs(3));
        let metrics = sidecar.get("/metrics").body;
        let down: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("stallwatch_reference_up{") && l.ends_with(" 0"))
            .collect();
        assert!(down.is_empty(), "{name}: {down:?}\n{}", sidecar.log());
        let alerts: Value = sidecar.get("/api/v1/alerts").json();
        assert_eq!(
            alerts["firing"].as_array().map(Vec::len),
            Some(0),
            "{name}: {alerts:#}"
        );
    }
}
