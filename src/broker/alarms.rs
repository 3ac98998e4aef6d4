//! Resource alarms, as RabbitMQ's `rabbit_alarm`: a memory high watermark
//! (the process's resident set against a fraction of the cgroup limit or of
//! physical RAM, or an absolute figure) and a free-space limit on the data
//! directory. A monitor thread measures both every `alarms.check_interval_ms`
//! and publishes the set of alarms in effect on a watch channel; connections
//! that publish while it is non-empty are blocked (`connection::block`), and
//! the health checks, `/api/nodes` and the metrics read it.

use crate::config::AlarmsConfig;
use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::Weak;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// Bit of the memory alarm in `Alarms::active`.
pub const MEMORY: u8 = 1;
/// Bit of the disk alarm.
pub const DISK: u8 = 2;

pub struct Alarms {
    /// Alarms in effect (`MEMORY | DISK` bits).
    state: watch::Sender<u8>,
    limits: Mutex<AlarmsConfig>,
    /// Last measurements and the limits they were compared with.
    pub mem_used: AtomicU64,
    pub mem_limit: AtomicU64,
    pub disk_free: AtomicU64,
    pub disk_free_limit: AtomicU64,
    node: String,
}

impl Alarms {
    pub fn new(cfg: &AlarmsConfig, node: &str) -> Alarms {
        Alarms {
            state: watch::channel(0).0,
            limits: Mutex::new(cfg.clone()),
            mem_used: AtomicU64::new(0),
            mem_limit: AtomicU64::new(memory_limit(cfg)),
            disk_free: AtomicU64::new(0),
            disk_free_limit: AtomicU64::new(cfg.disk_free_limit),
            node: node.to_string(),
        }
    }

    /// The alarms in effect now.
    pub fn active(&self) -> u8 {
        *self.state.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<u8> {
        self.state.subscribe()
    }

    /// New limits (SIGHUP); applied by the next `check`.
    pub fn set_limits(&self, cfg: &AlarmsConfig) {
        *self.limits.lock() = cfg.clone();
    }

    /// Measures memory and disk once and updates the alarms, logging each
    /// change as RabbitMQ does.
    pub fn check(&self, data_dir: &Path) {
        let cfg = self.limits.lock().clone();
        let limit = memory_limit(&cfg);
        let mut used = rss_bytes();
        let was = self.active();
        if used > limit && was & MEMORY != 0 {
            // Freed message memory may still be held by the allocator:
            // give it back before deciding the alarm is still on.
            trim_heap();
            used = rss_bytes();
        }
        self.mem_used.store(used, Ordering::Relaxed);
        self.mem_limit.store(limit, Ordering::Relaxed);
        let free = disk_free(data_dir);
        self.disk_free.store(free.unwrap_or(0), Ordering::Relaxed);
        self.disk_free_limit.store(cfg.disk_free_limit, Ordering::Relaxed);
        let mut now = 0;
        if used > limit {
            now |= MEMORY;
        }
        // An unknown free space (statvfs failed) raises no alarm.
        if free.is_some_and(|f| f < cfg.disk_free_limit) {
            now |= DISK;
        }
        if now == was {
            return;
        }
        for (bit, source, detail) in [
            (MEMORY, "memory", format!("{used} bytes used, limit {limit}")),
            (DISK, "disk", format!("{} bytes free, limit {}", free.unwrap_or(0), cfg.disk_free_limit)),
        ] {
            if now & bit != 0 && was & bit == 0 {
                tracing::warn!(
                    "{source} resource limit alarm set on node {} ({detail}). \
                     Publishers will be blocked until this alarm clears",
                    self.node
                );
            } else if now & bit == 0 && was & bit != 0 {
                tracing::warn!("{source} resource limit alarm cleared on node {} ({detail})", self.node);
            }
        }
        self.state.send_replace(now);
    }

    /// The alarms as the health checks list them (`rabbit_alarm:format_as_map`).
    pub fn resources(&self) -> Vec<&'static str> {
        let a = self.active();
        let mut v = Vec::new();
        if a & MEMORY != 0 {
            v.push("memory");
        }
        if a & DISK != 0 {
            v.push("disk space");
        }
        v
    }
}

/// The `connection.blocked` reason for a set of alarms (RabbitMQ's
/// `blocked_by_message`).
pub fn blocked_reason(active: u8) -> &'static str {
    match (active & MEMORY != 0, active & DISK != 0) {
        (true, true) => "low on memory & disk",
        (true, false) => "low on memory",
        _ => "low on disk",
    }
}

/// Runs `check` every `alarms.check_interval_ms` until the alarms are dropped.
pub fn spawn_monitor(alarms: Weak<Alarms>, data_dir: PathBuf) {
    let spawned = std::thread::Builder::new().name("warren-alarms".into()).spawn(move || {
        loop {
            let Some(a) = alarms.upgrade() else { return };
            a.check(&data_dir);
            let every = Duration::from_millis(a.limits.lock().check_interval_ms);
            drop(a);
            std::thread::sleep(every);
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the resource monitor: no resource alarms");
    }
}

/// The memory watermark in bytes for `cfg`.
pub fn memory_limit(cfg: &AlarmsConfig) -> u64 {
    if cfg.memory_high_watermark_bytes > 0 {
        return cfg.memory_high_watermark_bytes;
    }
    (total_memory() as f64 * cfg.memory_high_watermark) as u64
}

/// Memory available to this process: the cgroup limit (v2, then v1) where
/// one is set, else physical RAM.
pub fn total_memory() -> u64 {
    let ram = meminfo_total().unwrap_or(u64::MAX);
    let cgroup = ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok());
    match cgroup {
        Some(c) if c < ram => c,
        _ if ram == u64::MAX => 1 << 30,
        _ => ram,
    }
}

fn meminfo_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resident memory in bytes (VmRSS), 0 where /proc is not available.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Free bytes for unprivileged users on the file system holding `dir`.
#[cfg(unix)]
pub fn disk_free(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to writable
    // memory of the right size; statvfs only writes into it and we read it
    // only after it reported success.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialised the whole struct.
    let st = unsafe { st.assume_init() };
    // The field types differ between platforms (u32 on some 32-bit ones).
    #[allow(clippy::unnecessary_cast)]
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(not(unix))]
pub fn disk_free(_: &Path) -> Option<u64> {
    None
}

/// Returns freed heap pages to the OS (glibc keeps them otherwise, so the
/// resident set would not fall after a backlog drains).
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only walks glibc's own
    // arenas under their locks and releases free pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(bytes: u64, disk: u64) -> AlarmsConfig {
        AlarmsConfig {
            memory_high_watermark: 0.4,
            memory_high_watermark_bytes: bytes,
            disk_free_limit: disk,
            check_interval_ms: 1000,
        }
    }

    #[test]
    fn alarms_follow_the_limits() {
        let dir = tempfile::tempdir().unwrap();
        let a = Alarms::new(&cfg(u64::MAX, 0), "n");
        let mut rx = a.subscribe();
        a.check(dir.path());
        assert_eq!(a.active(), 0);
        a.set_limits(&cfg(1, 0));
        a.check(dir.path());
        assert_eq!(a.active(), MEMORY);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), MEMORY);
        a.set_limits(&cfg(1, u64::MAX));
        a.check(dir.path());
        assert_eq!(a.active(), MEMORY | DISK);
        assert_eq!(a.resources(), vec!["memory", "disk space"]);
        assert_eq!(blocked_reason(a.active()), "low on memory & disk");
        a.set_limits(&cfg(u64::MAX, u64::MAX));
        a.check(dir.path());
        assert_eq!(blocked_reason(a.active()), "low on disk");
        a.set_limits(&cfg(u64::MAX, 0));
        a.check(dir.path());
        assert_eq!(a.active(), 0);
        assert!(a.disk_free.load(Ordering::Relaxed) > 0);
        assert!(a.mem_used.load(Ordering::Relaxed) > 0);
    }
}
