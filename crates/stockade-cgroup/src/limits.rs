//! What a caller may ask for: the sandbox name and its limits, and the
//! checks that run before anything touches the cgroup file system.

use crate::CgroupError;

/// Smallest memory limit accepted: below this even a shell fails to start,
/// and the failure would look like a sandbox bug rather than a bad limit.
pub const MIN_MEMORY_BYTES: u64 = 4 << 20;

/// Smallest CPU limit accepted, in CPUs: the kernel refuses quotas under
/// 1 ms, and stockade always uses a 100 ms period.
pub const MIN_CPUS: f64 = 0.01;

/// The CFS period stockade uses on both versions, in microseconds.
pub(crate) const CPU_PERIOD_US: u64 = 100_000;

/// Resource limits of one sandbox; `None` leaves a resource unlimited.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// CPU bandwidth in CPUs (1.5 = one and a half cores' worth of time).
    pub cpus: Option<f64>,
    /// Memory limit in bytes; swap is not allowed to extend it.
    pub memory_bytes: Option<u64>,
    /// Maximum number of processes and threads.
    pub pids: Option<u64>,
}

impl Limits {
    /// Checks that every limit is one the kernel will accept and that leaves
    /// a program room to start.
    pub fn validate(&self) -> Result<(), CgroupError> {
        if let Some(cpus) = self.cpus {
            // Written as a negation so NaN is rejected too.
            if !(cpus.is_finite() && cpus >= MIN_CPUS) {
                return Err(CgroupError::InvalidCpus { cpus });
            }
        }
        if let Some(bytes) = self.memory_bytes {
            if bytes < MIN_MEMORY_BYTES {
                return Err(CgroupError::MemoryTooSmall { bytes });
            }
        }
        if let Some(pids) = self.pids {
            if pids < 1 {
                return Err(CgroupError::PidsTooSmall { pids });
            }
        }
        Ok(())
    }

    /// The CFS quota for [`CPU_PERIOD_US`], in microseconds.
    pub(crate) fn cpu_quota_us(&self) -> Option<u64> {
        self.cpus
            .map(|cpus| (cpus * CPU_PERIOD_US as f64).round() as u64)
    }
}

/// Checks that `name` is a valid sandbox id: 1 to 64 of `a-z`, `0-9`, `-`.
/// This is what keeps a name from escaping the `stockade` directory.
pub fn validate_name(name: &str) -> Result<(), CgroupError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(CgroupError::InvalidName {
            name: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_sandbox_ids() {
        for name in ["a", "sbx-0001", "0", &"a".repeat(64)] {
            validate_name(name).unwrap();
        }
    }

    #[test]
    fn rejects_names_that_could_escape_or_confuse_the_hierarchy() {
        for name in [
            "",
            "..",
            ".",
            "a/b",
            "../etc",
            "A",
            "a_b",
            "a b",
            "é",
            "a\n",
            &"a".repeat(65),
        ] {
            let err = validate_name(name).unwrap_err();
            assert!(err.to_string().contains("a-z, 0-9"), "{name:?}: {err}");
        }
    }

    #[test]
    fn rejects_cpu_limits_the_kernel_would_refuse() {
        for cpus in [0.0, -1.0, 0.001, f64::NAN, f64::INFINITY] {
            let limits = Limits {
                cpus: Some(cpus),
                ..Limits::default()
            };
            let err = limits.validate().unwrap_err();
            assert!(matches!(err, CgroupError::InvalidCpus { .. }), "{cpus}");
        }
    }

    #[test]
    fn rejects_memory_below_4_mib_and_zero_pids() {
        let small = Limits {
            memory_bytes: Some(MIN_MEMORY_BYTES - 1),
            ..Limits::default()
        };
        let msg = small.validate().unwrap_err().to_string();
        assert!(msg.contains("at least 4 MiB"), "{msg}");
        let zero = Limits {
            pids: Some(0),
            ..Limits::default()
        };
        let msg = zero.validate().unwrap_err().to_string();
        assert!(msg.contains("at least 1"), "{msg}");
    }

    #[test]
    fn accepts_the_smallest_valid_limits() {
        let limits = Limits {
            cpus: Some(MIN_CPUS),
            memory_bytes: Some(MIN_MEMORY_BYTES),
            pids: Some(1),
        };
        limits.validate().unwrap();
        assert_eq!(limits.cpu_quota_us(), Some(1000));
    }

    #[test]
    fn cpu_quota_is_cpus_times_the_period() {
        let limits = Limits {
            cpus: Some(1.5),
            ..Limits::default()
        };
        assert_eq!(limits.cpu_quota_us(), Some(150_000));
    }
}
