//! Per-process CPU time and peak memory from `/proc`, and kernel UDP drop counters.

use std::time::Duration;

use anyhow::{Context, bail};

/// User + system CPU time of a process (all its threads, exited ones included). Works on a
/// zombie too, which is how a receiver's shutdown work gets counted.
///
/// Read from the process's CPU clock (`clock_getcpuclockid`), exact to the nanosecond;
/// `/proc/<pid>/stat` counts in clock ticks (10 ms), which made a 100k-message TCP run of
/// Sluice (≈ 0.16 s of CPU) resolve only to ±0.1 CPU-s per million. The tick count is the
/// fallback.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    if let Some(cpu) = cpu_clock(pid) {
        return Ok(cpu);
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_cpu_time(&stat, clock_ticks_per_second())
}

fn cpu_clock(pid: u32) -> Option<Duration> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: both calls write only into the locals passed by pointer.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe {
        if libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) != 0
            || libc::clock_gettime(clock, &mut ts) != 0
        {
            return None;
        }
    }
    Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

fn parse_cpu_time(stat: &str, ticks_per_second: u64) -> anyhow::Result<Duration> {
    // The command name is in parentheses and may contain spaces: fields start after the last ')'.
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .context("malformed stat line")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state(0) ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime(11) stime(12).
    if fields.len() < 13 {
        bail!("stat line has {} fields after the name", fields.len());
    }
    let utime: u64 = fields[11].parse().context("utime")?;
    let stime: u64 = fields[12].parse().context("stime")?;
    Ok(Duration::from_secs_f64(
        (utime + stime) as f64 / ticks_per_second as f64,
    ))
}

/// Peak resident set size (VmHWM) in KiB; `None` once the process has exited.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// `Udp: RcvbufErrors` from `/proc/net/snmp` (system-wide kernel receive-buffer drops).
pub fn udp_rcvbuf_errors() -> anyhow::Result<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp")?;
    let mut udp_lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let names = udp_lines
        .next()
        .context("no Udp header in /proc/net/snmp")?;
    let values = udp_lines
        .next()
        .context("no Udp values in /proc/net/snmp")?;
    let index = names
        .split_whitespace()
        .position(|n| n == "RcvbufErrors")
        .context("no RcvbufErrors")?;
    values
        .split_whitespace()
        .nth(index)
        .context("short Udp line")?
        .parse()
        .context("RcvbufErrors value")
}

/// Whether something is bound to `port` on loopback/any (UDP) or listening on it (TCP).
pub fn port_bound(port: u16, udp: bool) -> bool {
    let files: &[&str] = if udp {
        &["/proc/net/udp", "/proc/net/udp6"]
    } else {
        &["/proc/net/tcp", "/proc/net/tcp6"]
    };
    let wanted = format!(":{port:04X}");
    files.iter().any(|file| {
        std::fs::read_to_string(file).is_ok_and(|table| {
            table.lines().skip(1).any(|line| {
                let mut cols = line.split_whitespace();
                let local = cols.nth(1).unwrap_or("");
                let state = cols.nth(1).unwrap_or("");
                local.ends_with(&wanted) && (udp || state == "0A")
            })
        })
    })
}

/// CPU time consumed so far by the calling thread.
pub fn thread_cpu_time() -> Duration {
    // SAFETY: clock_gettime writes into the timespec we own.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let line =
            "1234 (rs:main Q:Reg) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 100 0 0";
        assert_eq!(parse_cpu_time(line, 100).unwrap(), Duration::from_secs(3));
        assert!(parse_cpu_time("1 (x) S 1", 100).is_err());
    }

    #[test]
    fn own_process_has_cpu_time_and_peak_rss() {
        let pid = std::process::id();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(cpu_time(pid).unwrap() > Duration::ZERO);
        // The CPU clock and the tick count agree to within a few ticks.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let ticks = parse_cpu_time(&stat, clock_ticks_per_second()).unwrap();
        let clock = cpu_clock(pid).unwrap();
        assert!(
            clock.abs_diff(ticks) < Duration::from_millis(50),
            "clock {clock:?} vs ticks {ticks:?}"
        );
        assert!(peak_rss_kib(pid).unwrap() > 0);
        assert!(thread_cpu_time() > Duration::ZERO);
    }

    #[test]
    fn an_exited_unreaped_child_keeps_its_exact_cpu_time() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"])
            .spawn()
            .unwrap();
        let pid = child.id();
        // SAFETY: siginfo_t is plain data; WNOWAIT leaves our own child unreaped.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc =
            unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
        assert_eq!(rc, 0);
        let clock = cpu_clock(pid).expect("a zombie's CPU clock is readable");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let ticks = parse_cpu_time(&stat, clock_ticks_per_second()).unwrap();
        assert!(clock > Duration::from_millis(50), "{clock:?}");
        assert!(
            clock.abs_diff(ticks) < Duration::from_millis(50),
            "{clock:?} vs {ticks:?}"
        );
        child.wait().unwrap();
    }
}
