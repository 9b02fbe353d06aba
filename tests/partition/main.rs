//! Network-partition simulation suite: every family drives faults against the relay and checks
//! the same safety and liveness invariants against the upstream's own store (see README.md).

use edge_relay_testkit as support;

mod crash_families;
mod fleet_families;
mod lazyfs;
mod netns;
mod powercut;
mod proxy_families;
mod proxy_modes;
mod real_net;
mod sim;
mod summary;
