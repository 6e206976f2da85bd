//! The process's own metrics, read from /proc at each scrape (Linux; elsewhere none):
//! CPU time, memory, open and allowed file descriptors, start time. Names as every
//! Prometheus client library exports them.

use std::fs;

use super::Sample;

/// Clock ticks per second in /proc/*/stat (USER_HZ: 100 on every Linux architecture
/// quotad runs on; the kernel converts to it whatever its internal HZ).
const USER_HZ: f64 = 100.0;

pub(super) fn samples(out: &mut Vec<Sample>) {
    if let Ok(stat) = fs::read_to_string("/proc/self/stat") {
        from_stat(&stat, boot_time_s(), out);
    }
    if let Ok(status) = fs::read_to_string("/proc/self/status") {
        from_status(&status, out);
    }
    if let Ok(dir) = fs::read_dir("/proc/self/fd") {
        out.push(Sample::gauge(
            "process_open_fds",
            "Open file descriptors.",
            dir.count() as f64,
        ));
    }
    if let Some(max) = fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| max_open_files(&l))
    {
        out.push(Sample::gauge(
            "process_max_fds",
            "Most open file descriptors allowed (soft limit).",
            max,
        ));
    }
}

/// Seconds since the epoch at boot (`btime` in /proc/stat).
fn boot_time_s() -> Option<f64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// CPU time and start time from /proc/self/stat.
fn from_stat(stat: &str, boot_s: Option<f64>, out: &mut Vec<Sample>) {
    // The command name is in parentheses and may hold spaces: fields follow the last ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field n of proc(5) is fields[n - 3] here (state is field 3).
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
    if let (Some(utime), Some(stime)) = (field(14), field(15)) {
        out.push(Sample::counter_f64(
            "process_cpu_seconds_total",
            "CPU time used, user and system, in seconds.",
            (utime + stime) / USER_HZ,
        ));
    }
    if let (Some(start), Some(boot)) = (field(22), boot_s) {
        out.push(Sample::gauge(
            "process_start_time_seconds",
            "When the process started, in seconds since the Unix epoch.",
            boot + start / USER_HZ,
        ));
    }
}

/// Resident and virtual memory from /proc/self/status (in kB there).
fn from_status(status: &str, out: &mut Vec<Sample>) {
    let kb = |key: &str| {
        status.lines().find_map(|l| {
            let v = l.strip_prefix(key)?.trim().strip_suffix("kB")?;
            v.trim().parse::<f64>().ok().map(|k| k * 1024.0)
        })
    };
    if let Some(rss) = kb("VmRSS:") {
        out.push(Sample::gauge(
            "process_resident_memory_bytes",
            "Resident memory in bytes.",
            rss,
        ));
    }
    if let Some(vsz) = kb("VmSize:") {
        out.push(Sample::gauge(
            "process_virtual_memory_bytes",
            "Virtual memory in bytes.",
            vsz,
        ));
    }
}

/// The soft limit of "Max open files" in /proc/self/limits (None if unlimited).
fn max_open_files(limits: &str) -> Option<f64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(out: &[Sample], name: &str) -> Option<String> {
        out.iter()
            .find(|s| s.name == name)
            .map(|s| format!("{s:?}"))
    }

    #[test]
    fn parses_stat_status_and_limits() {
        let mut out = Vec::new();
        let stat = "42 (quo ta) S 1 42 42 0 -1 0 0 0 0 0 150 50 0 0 20 0 9 0 1000 12345 678";
        from_stat(stat, Some(1_700_000_000.0), &mut out);
        from_status(
            "Name:\tquotad\nVmSize:\t  2048 kB\nVmRSS:\t   512 kB\n",
            &mut out,
        );
        let cpu = value(&out, "process_cpu_seconds_total").unwrap();
        assert!(cpu.contains("Float(2.0)"), "{cpu}");
        let start = value(&out, "process_start_time_seconds").unwrap();
        assert!(start.contains("Float(1700000010.0)"), "{start}");
        let rss = value(&out, "process_resident_memory_bytes").unwrap();
        assert!(rss.contains("Float(524288.0)"), "{rss}");
        let limits = "Limit  Soft Limit  Hard Limit  Units\nMax open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024.0));
    }

    #[test]
    fn reads_this_process_on_linux() {
        let mut out = Vec::new();
        samples(&mut out);
        if cfg!(target_os = "linux") {
            for name in [
                "process_cpu_seconds_total",
                "process_start_time_seconds",
                "process_resident_memory_bytes",
                "process_open_fds",
                "process_max_fds",
            ] {
                assert!(value(&out, name).is_some(), "{name} missing: {out:?}");
            }
        }
    }
}
