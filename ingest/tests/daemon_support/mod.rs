//! What every test that runs the real `sluice` binary needs: its log lines, collected as they
//! come, so a test can wait for start-up lines and print the log when an assertion fails.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Child;
use std::sync::{Arc, Mutex};

/// Takes the child's piped stderr and collects its lines on a thread until the pipe closes.
#[allow(dead_code)] // deploy.rs reads only sink output
pub fn collect_stderr(child: &mut Child) -> Arc<Mutex<Vec<String>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().expect("stderr is piped");
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    log
}

/// Every line of the file sink's finished batch files in `dir` (uncompressed), in no
/// particular order. `.tmp-*` files are batches still being written and renamed into place
/// when complete: reading one could count it twice, or race its removal.
#[allow(dead_code)] // not every test binary reads sink output
pub fn finished_batch_lines(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return lines;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        lines.extend(text.lines().map(str::to_owned));
    }
    lines
}
