//! Page-cache policy of a load: read cold ranges so that they stay in the page cache (`keep`:
//! the next load of the same files is a warm one), past it with O_DIRECT (`bypass`: nothing is
//! double-buffered and nothing else is evicted), or `auto`: keep when the bytes to read fit in
//! the memory the kernel reports available, less a headroom.

use serde::Serialize;

use crate::engine::Backend;

/// Whether a load leaves what it reads in the page cache (`--cache`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CachePolicy {
    /// `keep` when the bytes to read fit in MemAvailable minus the headroom, else `bypass`.
    #[default]
    Auto,
    /// Cold ranges are read buffered, so they stay cached for the next load.
    Keep,
    /// Cold ranges are read with O_DIRECT (where the backend and filesystem allow it).
    Bypass,
}

impl CachePolicy {
    /// Every policy, in the order help texts list them.
    pub const ALL: [CachePolicy; 3] = [CachePolicy::Auto, CachePolicy::Keep, CachePolicy::Bypass];

    /// Name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            CachePolicy::Auto => "auto",
            CachePolicy::Keep => "keep",
            CachePolicy::Bypass => "bypass",
        }
    }

    /// The policy called `name`, if any.
    pub fn from_name(name: &str) -> Option<CachePolicy> {
        CachePolicy::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// Smallest default headroom: below it a machine has no room for the kernel, the loading
/// process and anything else running, whatever its size.
pub const MIN_DEFAULT_HEADROOM_BYTES: u64 = 2 << 30;

/// The headroom `auto` leaves when none is given: 10% of MemTotal, at least
/// [`MIN_DEFAULT_HEADROOM_BYTES`].
///
/// Why: MemAvailable is a snapshot; other processes grow, and a host load's destination
/// buffers fill while the cache does. A tenth of the machine scales with it (2.4 GB on a 24 GB
/// box, 200 GB on a 2 TB host, where a model that needs the last tenth to stay cached is better
/// read past the cache); the floor keeps small machines from counting on their last gigabytes.
/// Too small a headroom costs little anyway: cached pages are clean and the kernel drops them
/// under pressure; too large a one only makes a load skip the cache (today's behaviour).
pub fn default_headroom_bytes(mem_total_bytes: u64) -> u64 {
    (mem_total_bytes / 10).max(MIN_DEFAULT_HEADROOM_BYTES)
}

/// `auto`'s rule: keep when `bytes` fit in `mem_available_bytes` minus `headroom_bytes`.
pub fn auto_keeps(bytes: u64, mem_available_bytes: u64, headroom_bytes: u64) -> bool {
    bytes <= mem_available_bytes.saturating_sub(headroom_bytes)
}

/// The two figures of /proc/meminfo the policy reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemInfo {
    /// MemTotal, bytes.
    pub total_bytes: u64,
    /// MemAvailable (what can be allocated without swapping, page cache included), bytes.
    pub available_bytes: u64,
}

impl MemInfo {
    /// Reads /proc/meminfo.
    pub fn read() -> std::io::Result<MemInfo> {
        let text = std::fs::read_to_string("/proc/meminfo")?;
        MemInfo::parse(&text).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "/proc/meminfo lacks MemTotal or MemAvailable",
            )
        })
    }

    /// Parses the text of /proc/meminfo (`MemTotal:  24576000 kB` lines).
    pub fn parse(text: &str) -> Option<MemInfo> {
        let kib = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
                .and_then(|k| k.checked_mul(1024))
        };
        Some(MemInfo {
            total_bytes: kib("MemTotal:")?,
            available_bytes: kib("MemAvailable:")?,
        })
    }
}

/// The policy a load ran with, and why.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CacheDecision {
    /// The policy asked for.
    pub asked: CachePolicy,
    /// The policy that ran: [`CachePolicy::Keep`] or [`CachePolicy::Bypass`].
    pub policy: CachePolicy,
    /// Why, e.g. `auto: 1.50 GB fits in 20.10 GB available minus 2.40 GB headroom`.
    pub reason: String,
}

impl CacheDecision {
    /// Whether cold ranges are read so that they stay cached.
    pub fn keeps(&self) -> bool {
        self.policy == CachePolicy::Keep
    }

    /// One line for reports: `keep (auto: 1.50 GB fits in …)`.
    pub fn summary(&self) -> String {
        format!("{} ({})", self.policy.name(), self.reason)
    }
}

/// Decides the policy of a load of `bytes` with `backend`: `pread` and `mmap` read through the
/// page cache whatever was asked (reported, not refused, so one setting can serve every
/// backend); `auto` asks `mem` (normally [`MemInfo::read`]) and keeps when
/// [`auto_keeps`]; `headroom_bytes` of `None` means [`default_headroom_bytes`].
pub fn decide(
    asked: CachePolicy,
    backend: Backend,
    bytes: u64,
    headroom_bytes: Option<u64>,
    mem: impl FnOnce() -> std::io::Result<MemInfo>,
) -> CacheDecision {
    let (policy, reason) = match (backend, asked) {
        (Backend::Pread | Backend::Mmap, CachePolicy::Bypass) => (
            CachePolicy::Keep,
            format!(
                "bypass asked, but backend {} reads through the page cache; only auto and uring bypass it",
                backend.name()
            ),
        ),
        (Backend::Pread | Backend::Mmap, _) => (
            CachePolicy::Keep,
            format!("backend {} reads through the page cache", backend.name()),
        ),
        (_, CachePolicy::Keep | CachePolicy::Bypass) => (asked, "asked".to_string()),
        (_, CachePolicy::Auto) => match mem() {
            Ok(m) => {
                let headroom = headroom_bytes.unwrap_or(default_headroom_bytes(m.total_bytes));
                let keep = auto_keeps(bytes, m.available_bytes, headroom);
                let verdict = if keep { "fits" } else { "does not fit" };
                (
                    if keep {
                        CachePolicy::Keep
                    } else {
                        CachePolicy::Bypass
                    },
                    format!(
                        "auto: {} {verdict} in {} available minus {} headroom",
                        gb(bytes),
                        gb(m.available_bytes),
                        gb(headroom)
                    ),
                )
            }
            // Unknown free memory: today's behaviour, which cannot crowd anything out.
            Err(e) => (
                CachePolicy::Bypass,
                format!("auto: available memory unknown ({e})"),
            ),
        },
    };
    CacheDecision {
        asked,
        policy,
        reason,
    }
}

/// `1500000000` → `1.50 GB` (decimal, as the CLI's reports quote sizes).
fn gb(bytes: u64) -> String {
    format!("{:.2} GB", bytes as f64 / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GIB: u64 = 1 << 30;

    fn mem(total: u64, available: u64) -> impl FnOnce() -> std::io::Result<MemInfo> {
        move || {
            Ok(MemInfo {
                total_bytes: total,
                available_bytes: available,
            })
        }
    }

    #[test]
    fn parses_meminfo() {
        let text =
            "MemTotal:       24576000 kB\nMemFree:         1000 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(
            MemInfo::parse(text),
            Some(MemInfo {
                total_bytes: 24_576_000 * 1024,
                available_bytes: 20_000_000 * 1024,
            })
        );
        assert_eq!(MemInfo::parse("MemTotal: 10 kB\n"), None);
        assert_eq!(MemInfo::parse("MemTotal: x kB\nMemAvailable: 1 kB"), None);
        assert!(MemInfo::read().is_ok(), "this test runs on Linux");
    }

    #[test]
    fn default_headroom_is_a_tenth_with_a_floor() {
        assert_eq!(default_headroom_bytes(0), 2 * GIB);
        assert_eq!(default_headroom_bytes(8 * GIB), 2 * GIB);
        assert_eq!(default_headroom_bytes(100 * GIB), 10 * GIB);
    }

    #[test]
    fn auto_says_why() {
        let d = decide(
            CachePolicy::Auto,
            Backend::Auto,
            1_500_000_000,
            None,
            mem(24_000_000_000, 20_100_000_000),
        );
        assert_eq!(d.policy, CachePolicy::Keep);
        assert_eq!(
            d.summary(),
            "keep (auto: 1.50 GB fits in 20.10 GB available minus 2.40 GB headroom)"
        );
        let d = decide(
            CachePolicy::Auto,
            Backend::Uring,
            19 * GIB,
            Some(2 * GIB),
            mem(24 * GIB, 20 * GIB),
        );
        assert_eq!(d.policy, CachePolicy::Bypass);
        assert!(d.reason.contains("does not fit"), "{}", d.reason);
        let d = decide(CachePolicy::Auto, Backend::Auto, 1, None, || {
            Err(std::io::Error::other("no /proc"))
        });
        assert_eq!(d.policy, CachePolicy::Bypass);
        assert!(d.reason.contains("unknown"), "{}", d.reason);
    }

    #[test]
    fn pread_and_mmap_always_keep_and_say_so() {
        for backend in [Backend::Pread, Backend::Mmap] {
            for asked in CachePolicy::ALL {
                let d = decide(asked, backend, u64::MAX, Some(0), mem(0, 0));
                assert_eq!(d.policy, CachePolicy::Keep, "{backend:?} {asked:?}");
                assert!(d.reason.contains(backend.name()), "{}", d.reason);
                assert_eq!(
                    d.reason.contains("bypass asked"),
                    asked == CachePolicy::Bypass
                );
            }
        }
        for backend in [Backend::Auto, Backend::Uring] {
            for asked in [CachePolicy::Keep, CachePolicy::Bypass] {
                let d = decide(asked, backend, u64::MAX, Some(u64::MAX), mem(0, 0));
                assert_eq!((d.policy, d.reason.as_str()), (asked, "asked"));
            }
        }
        for p in CachePolicy::ALL {
            assert_eq!(CachePolicy::from_name(p.name()), Some(p));
        }
        assert_eq!(CachePolicy::from_name("Keep"), None);
    }

    proptest! {
        #[test]
        fn auto_keeps_exactly_what_fits(bytes: u64, available: u64, headroom: u64) {
            let keep = auto_keeps(bytes, available, headroom);
            // Fits: the bytes plus the headroom are within what is available.
            let fits = bytes.checked_add(headroom).is_some_and(|need| need <= available)
                || (headroom >= available && bytes == 0);
            prop_assert_eq!(keep, fits);
            if keep {
                prop_assert!(bytes <= available);
            }
        }

        #[test]
        fn auto_is_monotone(
            bytes in 0u64..1 << 45,
            less in 0u64..1 << 45,
            available in 0u64..1 << 45,
            more in 0u64..1 << 45,
            headroom in 0u64..1 << 40,
        ) {
            // Keeping b bytes means keeping any fewer, with more memory or less headroom too.
            if auto_keeps(bytes, available, headroom) {
                prop_assert!(auto_keeps(bytes.saturating_sub(less), available, headroom));
                prop_assert!(auto_keeps(bytes, available + more, headroom));
                prop_assert!(auto_keeps(bytes, available, headroom.saturating_sub(less)));
            }
        }

        #[test]
        fn the_decision_follows_the_rule(
            bytes in 0u64..1 << 42,
            total in 0u64..1 << 42,
            available in 0u64..1 << 42,
            headroom in proptest::option::of(0u64..1 << 40),
        ) {
            let d = decide(CachePolicy::Auto, Backend::Auto, bytes, headroom, mem(total, available));
            let h = headroom.unwrap_or(default_headroom_bytes(total));
            prop_assert_eq!(d.keeps(), auto_keeps(bytes, available, h));
            prop_assert!(d.reason.starts_with("auto: "), "{}", d.reason);
            prop_assert!(h >= MIN_DEFAULT_HEADROOM_BYTES || headroom.is_some());
        }
    }
}
