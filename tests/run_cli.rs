//! `llamaduo run` as a user runs it: the real binary with a fake stage (src/run/fake_trainer.sh,
//! a shell script that honours the stage contract), Ctrl-C from outside, `--json` output.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FAKE: &str = include_str!("../src/run/fake_trainer.sh");
const QUICKSTART: &str = include_str!("../examples/quickstart/migration.yaml");

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(knobs: &[(&str, &str)]) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        // An external teacher URL, so no simulate-teacher is started.
        let yaml = QUICKSTART.replace(
            "    model: triage\n",
            "    model: triage\n    baseUrl: http://127.0.0.1:9/v1\n",
        );
        std::fs::write(dir.path().join("migration.yaml"), yaml).expect("manifest");
        // The coverage file the manifest names (round 1 refuses to start without it).
        std::fs::write(
            dir.path().join("coverage.jsonl"),
            include_str!("../examples/quickstart/coverage.jsonl"),
        )
        .expect("coverage");
        std::fs::write(dir.path().join("fake.sh"), FAKE).expect("fake");
        let mut w = format!(
            "#!/bin/sh\nexport FAKE_TRAINER_LOG='{}'\n",
            dir.path().join("calls.log").display()
        );
        for (k, v) in knobs {
            w.push_str(&format!("export {k}='{v}'\n"));
        }
        w.push_str(&format!(
            "exec /bin/sh '{}' \"$@\"\n",
            dir.path().join("fake.sh").display()
        ));
        let t = dir.path().join("trainer.sh");
        std::fs::write(&t, w).expect("wrapper");
        std::fs::set_permissions(&t, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Self { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn command(&self, trainer: &Path) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_llamaduo"));
        c.arg("run")
            .arg(self.path("migration.yaml"))
            .arg("--workdir")
            .arg(self.path("work"))
            .arg("--grace-seconds")
            .arg("5")
            .env("LLAMADUO_TRAINER", trainer)
            .stdin(Stdio::null());
        c
    }

    fn calls(&self) -> String {
        std::fs::read_to_string(self.path("calls.log")).unwrap_or_default()
    }
}

#[test]
fn ctrl_c_stops_the_stage_with_sigterm_and_a_rerun_resumes() {
    let s = Setup::new(&[("FAKE_SLEEP_STAGE", "train"), ("FAKE_SLEEP", "60")]);
    let mut child = s
        .command(&s.path("trainer.sh"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn llamaduo");
    let started = Instant::now();
    while !s.calls().contains("train round=1") {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "train never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(130), "interrupted exit status");
    assert!(
        s.calls().contains("terminated train round=1"),
        "the stage got SIGTERM: {}",
        s.calls()
    );
    let yaml = std::fs::read_to_string(s.path("work/status.yaml")).expect("status");
    assert!(yaml.contains("phase: Training"), "{yaml}");

    // The plain fake finishes at once; the rerun picks up at train round 1.
    std::fs::write(
        s.path("plain.sh"),
        format!(
            "#!/bin/sh\nexport FAKE_TRAINER_LOG='{}'\nexec /bin/sh '{}' \"$@\"\n",
            s.path("calls.log").display(),
            s.path("fake.sh").display()
        ),
    )
    .expect("plain");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(s.path("plain.sh"), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
    }
    let out = s
        .command(&s.path("plain.sh"))
        .arg("--json")
        .output()
        .expect("rerun");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    assert_eq!(v["ending"], "finished");
    assert_eq!(v["status"]["phase"], "Succeeded");
    assert_eq!(v["status"]["rounds"].as_array().map(Vec::len), Some(2));
    assert!(
        v["bestModel"]
            .as_str()
            .is_some_and(|p| p.ends_with("round-2/model")),
        "{v}"
    );
    assert_eq!(
        s.calls().matches("synthesize round=1").count(),
        1,
        "{}",
        s.calls()
    );
    assert_eq!(
        s.calls().matches("train round=1 attempt=1").count(),
        2,
        "{}",
        s.calls()
    );
}

#[test]
fn an_invalid_manifest_prints_every_problem() {
    let s = Setup::new(&[]);
    let yaml = std::fs::read_to_string(s.path("migration.yaml"))
        .expect("read")
        .replace("meanScore: 80", "meanScore: 150")
        .replace("batchSize: 16", "batchSize: 0");
    std::fs::write(s.path("migration.yaml"), yaml).expect("write");
    let out = s.command(&s.path("trainer.sh")).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("target.meanScore"), "{err}");
    assert!(err.contains("batchSize"), "{err}");
    assert!(s.calls().is_empty());
}

#[test]
fn help_says_where_api_keys_come_from() {
    let out = Command::new(env!("CARGO_BIN_EXE_llamaduo"))
        .args(["run", "--help"])
        .output()
        .expect("help");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("LLAMADUO_TEACHER_API_KEY"), "{text}");
    assert!(text.contains("OPENAI_API_KEY"), "{text}");
    assert!(text.contains("--workdir"), "{text}");
}
