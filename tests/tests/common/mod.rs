//! The agent's test helpers this suite reuses as they are: the relay
//! process (`relay_process`) and the line-speaking helper process (the
//! phone); and the relay's tests' `redis-server` launcher.

#[allow(dead_code, unreachable_pub)]
#[path = "../../../desktop-agent/tests/common/relay.rs"]
pub mod relay;

#[allow(dead_code, unreachable_pub)]
#[path = "../../../desktop-agent/tests/common/helper.rs"]
pub mod helper;

#[path = "../../../relay/tests/support/redis.rs"]
pub mod redis;
