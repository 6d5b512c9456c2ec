//! Rate limits (governor): new connections and pairing claims per client
//! address (IPv4 address or IPv6 prefix: `net::IpKey`), frames per device.

use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota};
use tandem_proto::DeviceId;

use crate::config::Config;
use crate::net::IpKey;

/// The relay's rate limiters.
#[derive(Debug)]
pub(crate) struct Limits {
    connects: DefaultKeyedRateLimiter<IpKey>,
    claims: DefaultKeyedRateLimiter<IpKey>,
    frames: DefaultKeyedRateLimiter<DeviceId>,
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN)
}

impl Limits {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            connects: DefaultKeyedRateLimiter::keyed(Quota::per_minute(nz(
                config.connects_per_ip_per_minute
            ))),
            claims: DefaultKeyedRateLimiter::keyed(
                Quota::per_minute(nz(config.pair_claims_per_ip_per_minute))
                    .allow_burst(nz(config.pair_claims_per_ip_per_minute.min(5))),
            ),
            frames: DefaultKeyedRateLimiter::keyed(Quota::per_second(nz(
                config.frames_per_device_per_second
            ))),
        }
    }

    /// May `ip` open another connection now?
    pub(crate) fn connect(&self, ip: IpKey) -> bool {
        self.connects.check_key(&ip).is_ok()
    }

    /// May `ip` claim a pairing mailbox now?
    pub(crate) fn claim(&self, ip: IpKey) -> bool {
        self.claims.check_key(&ip).is_ok()
    }

    /// May `device` send another frame now?
    pub(crate) fn frame(&self, device: DeviceId) -> bool {
        self.frames.check_key(&device).is_ok()
    }

    /// Forget keys whose limits have fully recovered (bounded memory).
    pub(crate) fn sweep(&self) {
        self.connects.retain_recent();
        self.claims.retain_recent();
        self.frames.retain_recent();
    }
}
