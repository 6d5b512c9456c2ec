//! The agent's test helpers this suite reuses as they are: the relay
//! process (`relay_process`) and the line-speaking helper process (the
//! phone).

#[allow(dead_code, unreachable_pub)]
#[path = "../../../desktop-agent/tests/common/relay.rs"]
pub mod relay;

#[allow(dead_code, unreachable_pub)]
#[path = "../../../desktop-agent/tests/common/helper.rs"]
pub mod helper;
