//! A damaged network between the relay and its devices: the relay runs in
//! a network namespace of its own (`ip netns`), joined to this one by a
//! veth pair on a private 10.x /30; the agent and the phone stay outside
//! and reach it over the veth. Faults are nftables rules inside the
//! namespace, per direction: `inbound` (devices → relay, the input hook)
//! and `outbound` (relay → devices, the output hook): random loss
//! (`numgen random … drop`), duplication (`dup to`), one direction dropped
//! (a one-way partition), both dropped (a blackhole: packets vanish, no
//! RST), a reset (`reject with tcp reset`).
//!
//! Not here: delay and reordering. They need `tc netem`, and this machine's
//! kernel has no netem (`CONFIG_NET_SCH_NETEM` unset: `tc qdisc add … netem`
//! answers "Specified qdisc kind is unknown"); [`Netns::netem`] tries it
//! and says whether it worked, for a kernel that has it.
//!
//! [`Netns`] removes the namespace, the veth pair and the rules when it is
//! dropped, during a panic too.

use std::process::Command;

/// A namespace for the relay; removed on drop.
pub struct Netns {
    pub name: String,
    host_if: String,
    ns_if: String,
    /// This side's address.
    pub host_ip: String,
    /// The relay's side.
    pub ns_ip: String,
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0]).args(&args[1..]).output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn must(args: &[&str]) {
    if let Err(e) = run(args) {
        panic!("{e}");
    }
}

impl Netns {
    /// A fresh namespace `tf<pid><idx>` with its veth pair up. Needs root
    /// and iproute2 and nft.
    pub fn new(idx: u32) -> Netns {
        let id = std::process::id() % 100_000;
        let name = format!("tf{id}n{idx}");
        let host_if = format!("tf{id}h{idx}");
        let ns_if = format!("tf{id}r{idx}");
        let net = format!("10.{}.{}", 200 + idx, id % 250);
        let (host_ip, ns_ip) = (format!("{net}.1"), format!("{net}.2"));
        // A namespace of this name left over by a killed run of the same pid.
        let _ = run(&["ip", "link", "del", &host_if]);
        let _ = run(&["ip", "netns", "del", &name]);
        let ns = Netns { name, host_if, ns_if, host_ip, ns_ip };
        must(&["ip", "netns", "add", &ns.name]);
        must(&["ip", "link", "add", &ns.host_if, "type", "veth", "peer", "name", &ns.ns_if]);
        must(&["ip", "link", "set", &ns.ns_if, "netns", &ns.name]);
        must(&["ip", "addr", "add", &format!("{}/30", ns.host_ip), "dev", &ns.host_if]);
        must(&["ip", "link", "set", &ns.host_if, "up"]);
        ns.exec(&["ip", "addr", "add", &format!("{}/30", ns.ns_ip), "dev", &ns.ns_if]);
        ns.exec(&["ip", "link", "set", &ns.ns_if, "up"]);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns.exec(&["nft", "add", "table", "ip", "faults"]);
        for (chain, hook) in [("inbound", "input"), ("outbound", "output")] {
            ns.exec(&[
                "nft",
                "add",
                "chain",
                "ip",
                "faults",
                chain,
                &format!("{{ type filter hook {hook} priority 0; policy accept; }}"),
            ]);
        }
        ns
    }

    fn exec(&self, args: &[&str]) {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        must(&all);
    }

    fn rule(&self, chain: &str, rule: &str) {
        let mut args = vec!["nft", "add", "rule", "ip", "faults", chain];
        args.extend(rule.split(' '));
        self.exec(&args);
    }

    /// Remove every fault: the network heals.
    pub fn heal(&self) {
        self.exec(&["nft", "flush", "chain", "ip", "faults", "inbound"]);
        self.exec(&["nft", "flush", "chain", "ip", "faults", "outbound"]);
    }

    /// Drop `inbound`% of packets to the relay and `outbound`% of its own.
    pub fn loss(&self, inbound: u32, outbound: u32) {
        self.heal();
        if inbound > 0 {
            self.rule(
                "inbound",
                &format!("meta l4proto tcp numgen random mod 100 < {inbound} drop"),
            );
        }
        if outbound > 0 {
            self.rule(
                "outbound",
                &format!("meta l4proto tcp numgen random mod 100 < {outbound} drop"),
            );
        }
    }

    /// Send `percent`% of the relay's packets twice.
    pub fn duplicate(&self, percent: u32) {
        self.heal();
        self.rule(
            "outbound",
            &format!(
                "numgen random mod 100 < {percent} dup to {} device {}",
                self.host_ip, self.ns_if
            ),
        );
    }

    /// Drop everything towards the relay (it still sends, nothing answers).
    pub fn partition_inbound(&self) {
        self.heal();
        self.rule("inbound", "meta l4proto tcp drop");
    }

    /// Drop everything the relay sends (devices' packets still reach it).
    pub fn partition_outbound(&self) {
        self.heal();
        self.rule("outbound", "meta l4proto tcp drop");
    }

    /// Drop everything both ways, silently: no RST, no ICMP.
    pub fn blackhole(&self) {
        self.heal();
        self.rule("inbound", "meta l4proto tcp drop");
        self.rule("outbound", "meta l4proto tcp drop");
    }

    /// Answer every packet to the relay with a TCP reset.
    pub fn reset(&self) {
        self.heal();
        self.rule("inbound", "meta l4proto tcp reject with tcp reset");
    }

    /// Try `tc qdisc … netem ARGS` on the relay's side; whether the kernel
    /// has netem.
    pub fn netem(&self, args: &str) -> bool {
        let mut all = vec!["ip", "netns", "exec", &self.name, "tc", "qdisc", "replace", "dev"];
        all.push(&self.ns_if);
        all.extend(["root", "netem"]);
        all.extend(args.split(' '));
        run(&all).is_ok()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(&["ip", "link", "del", &self.host_if]);
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}
