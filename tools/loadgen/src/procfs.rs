//! What the load generator reads of other processes and of the machine from /proc: CPU
//! time (in USER_HZ ticks, 100 per second on Linux) and resident memory.

/// (utime + stime, cutime + cstime, ppid) of a process, in USER_HZ ticks.
pub fn proc_ticks(pid: u32) -> Option<(u64, u64, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some((n(11)? + n(12)?, n(13)? + n(14)?, n(1)? as u32))
}

/// CPU seconds of `pid`, its exited children and its live children (USER_HZ = 100).
pub fn tree_cpu_secs(pid: u32) -> Option<f64> {
    let (own, exited, _) = proc_ticks(pid)?;
    let mut total = own + exited;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Some((t, _, ppid)) = proc_ticks(child)
                && ppid == pid
            {
                total += t;
            }
        }
    }
    Some(total as f64 / 100.0)
}

/// Busy CPU seconds of the whole machine (all cores) from /proc/stat.
pub fn machine_cpu_secs() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<u64> = s
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)?;
    Some(busy as f64 / 100.0)
}

/// CPU time (user + system) of one process, seconds, children not included.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    proc_ticks(pid).map(|(own, _, _)| own as f64 / 100.0)
}

/// VmRSS of a process, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
