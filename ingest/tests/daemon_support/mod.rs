//! What every test that runs the real `sluice` binary needs: its log lines, collected as they
//! come, so a test can wait for start-up lines and print the log when an assertion fails.

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::{Arc, Mutex};

/// Takes the child's piped stderr and collects its lines on a thread until the pipe closes.
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
