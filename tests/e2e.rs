//! End-to-end: real iPXE clients in QEMU boot through the real `pxesrv` binary.
//!
//! Each test writes a boot tree whose targets are scripts chaining marker boot sectors, starts
//! `pxesrv` on it, boots VMs, and asserts which target each boot reached by all of: the marker
//! on the serial console, QEMU's exit status 33, and the server's `boot` log line (rule, entry,
//! target). Runs only with `PXESRV_E2E=1` (see `harness::enabled`):
//!
//!     PXESRV_E2E=1 cargo test --test e2e
//!
//! `PXESRV_E2E_KEEP=1` keeps each test's directory (boot tree, consoles, server and dnsmasq
//! logs) for a look afterwards.
//!
//! Most tests use QEMU user networking, where the guest reaches the host's loopback as
//! 10.0.2.2 and the server sees every guest as 127.0.0.1; the MAC comes with the request.
//! `namespace_dnsmasq_*` runs the deployment's network: dnsmasq in a private namespace.
//!
//! The scenarios of issue #3, and what was added:
//! 1. `no_entry_boots_default`
//! 2. `static_by_mac_two_clients_two_targets`, `static_by_ip`, `static_by_longest_subnet`
//! 3. `once_boots_once_then_static_and_is_consumed`
//! 4. `script_in_subdirectory_chains_relative_file`
//! 5. `namespace_dnsmasq_clients_boot_by_their_real_addresses`
//! 6. `mac_bootstrap_without_mac_in_bootfile`, `mac_bootstrap_names_the_nic_that_boots`
//! 7. `dangling_once_link_falls_through`
//! - `once_by_ip_goes_to_exactly_one_of_two_simultaneous_boots`,
//!   `operator_changes_while_server_runs_take_effect_next_boot`,
//!   `sanboot_over_http_from_plain_files`, `relative_sanboot_in_subdirectory_script`

mod harness;

use std::time::Duration;

use harness::check::{assert_booted, Expect, Who};
use harness::netns::{Dnsmasq, Netns, BRIDGE_IP};
use harness::qemu::{boot, boot_all, Net, VmSpec};
use harness::server::{Server, ServerSpec};
use harness::tree::Tree;
use harness::{Case, Need, REDIRECT_WITH_MAC};

/// `static/NAME` (or `once/NAME`) pointing at `target` the way `ln -s ../TARGET` would.
fn entry_link(tree: &Tree, entry: &str, target: &str) {
    tree.link(entry, &format!("../{target}"));
}

#[test]
#[cfg_attr(
    not(pxesrv_e2e),
    ignore = "end-to-end: boots QEMU VMs as root; run with PXESRV_E2E=1 cargo test --test e2e"
)]
fn no_entry_boots_default() {
    let Some(c) = Case::new("no_entry_boots_default", &[Need::Qemu, Need::IpxeRom]) else {
        return;
    };
    // `default` as a plain file this time (elsewhere it is a link).
    c.tree.marker_script("default", "default");
    let other = c.tree.marker_target("other-client");
    // Other clients have entries; this one has none.
    entry_link(&c.tree, "static/52-54-00-e2-01-99", &other);
    entry_link(&c.tree, "static/10.9.9.9", &other);
    let server = c.server();

    let mac = "52:54:00:e2:01:01";
    let mark = server.mark();
    let out = boot(
        &c.vm("default", mac, &server, REDIRECT_WITH_MAC),
        c.dir.path(),
    );
    assert_booted(
        &out,
        &server,
        &c.tree,
        mark,
        &Who::Mac(mac.into()),
        &Expect::new("default", "default", "default", "default").client("127.0.0.1"),
    );
}

#[test]
#[cfg_attr(
    not(pxesrv_e2e),
    ignore = "end-to-end: boots QEMU VMs as root; run with PXESRV_E2E=1 cargo test --test e2e"
)]
fn static_by_mac_two_clients_two_targets() {
    let Some(c) = Case::new(
        "static_by_mac_two_clients_two_targets",
        &[Need::Qemu, Need::IpxeRom],
    ) else {
        return;
    };
    let a = c.tree.marker_target("mac-a");
    let b = c.tree.marker_target("mac-b");
    let default = c.tree.marker_target("default");
    c.tree.link("default", &default);
    // Both spellings an operator might type.
    entry_link(&c.tree, "static/52-54-00-e2-02-01", &a);
    entry_link(&c.tree, "static/52:54:00:E2:02:02", &b);
    let server = c.server();

    let (mac_a, mac_b) = ("52:54:00:e2:02:01", "52:54:00:e2:02:02");
    let mark = server.mark();
    let outs = boot_all(
        &[
            c.vm("mac-a", mac_a, &server, REDIRECT_WITH_MAC),
            c.vm("mac-b", mac_b, &server, REDIRECT_WITH_MAC),
        ],
        c.dir.path(),
    );
    assert_booted(
        &outs[0],
        &server,
        &c.tree,
        mark,
        &Who::Mac(mac_a.into()),
        &Expect::new("mac-a", "static-mac", "static/52-54-00-e2-02-01", &a),
    );
    assert_booted(
        &outs[1],
        &server,
        &c.tree,
        mark,
        &Who::Mac(mac_b.into()),
        &Expect::new("mac-b", "static-mac", "static/52:54:00:E2:02:02", &b),
    );
}

#[test]
#[cfg_attr(
    not(pxesrv_e2e),
    ignore = "end-to-end: boots QEMU VMs as root; run with PXESRV_E2E=1 cargo test --test e2e"
)]
fn static_by_ip() {
    let Some(c) = Case::new("static_by_ip", &[Need::Qemu, Need::IpxeRom]) else {
        return;
    };
    let by_ip = c.tree.marker_target("by-ip");
    let by_subnet = c.tree.marker_target("by-subnet");
    let default = c.tree.marker_target("default");
    c.tree.link("default", &default);
    // User networking: the server sees the guest as 127.0.0.1. The IP entry beats the subnet.
    entry_link(&c.tree, "static/127.0.0.1", &by_ip);
    entry_link(&c.tree, "static/127.0.0.0_8", &by_subnet);
    let server = c.server();

    let mac = "52:54:00:e2:03:01";
    let mark = server.mark();
    let out = boot(
        &c.vm("by-ip", mac, &server, REDIRECT_WITH_MAC),
        c.dir.path(),
    );
    assert_booted(
        &out,
        &server,
        &c.tree,
        mark,
        &Who::Mac(mac.into()),
        &Expect::new("by-ip", "static-ip", "static/127.0.0.1", &by_ip).client("127.0.0.1"),
    );
}

#[test]
#[cfg_attr(
    not(pxesrv_e2e),
    ignore = "end-to-end: boots QEMU VMs as root; run with PXESRV_E2E=1 cargo test --test e2e"
)]
fn static_by_longest_subnet() {
    let Some(c) = Case::new("static_by_longest_subnet", &[Need::Qemu, Need::IpxeRom]) else {
        return;
    };
    let wide = c.tree.marker_target("subnet-8");
    let elsewhere = c.tree.marker_target("subnet-elsewhere");
    let default = c.tree.marker_target("default");
    c.tree.link("default", &default);
    entry_link(&c.tree, "static/127.0.0.0_8", &wide);
    // A static entry can be a plain file: then it is its own target.
    c.tree.marker_script("static/127.0.0.0_24", "subnet-24");
    entry_link(&c.tree, "static/10.77.0.0_24", &elsewhere);
    let server = c.server();

    let mac = "52:54:00:e2:04:01";
    let mark = server.mark();
    let out = boot(
        &c.vm("subnet", mac, &server, REDIRECT_WITH_MAC),
        c.dir.path(),
    );
    assert_booted(
        &out,
        &server,
        &c.tree,
        mark,
        &Who::Mac(mac.into()),
        &Expect::new(
            "subnet-24",
            "static-subnet",
            "static/127.0.0.0_24",
            "static/127.0.0.0_24",
        )
        .client("127.0.0.1"),
    );
}

#[test]
#[cfg_attr(
    not(pxesrv_e2e),
    ignore = "end-to-end: boots QEMU VMs as root; run with PXESRV_E2E=1 cargo test --test e2e"
)]
fn once_boots_once_then_static_and_is_consumed() {
    let Some(c) = Case::new(
        "once_boots_once_then_static_and_is_consumed",
        &[Need::Qemu, Need::IpxeRom],
    ) else {
        return;
    };
    let once = c.tree.marker_target("once");
    let stat = c.tree.marker_target("static");
    let default = c.tree.marker_target("default");
    c.tree.link("default", &default);
    let name = "52-54-00-e2-05-01";
    let once_entry = format!("once/{name}");
    let link_text = format!("../{once}");
    c.tree.link(&once_entry, &link_text);
    entry_link(&c.tree, &format!("static/{name}"), &stat);
    let server = c.server();
    let mac = "52:54:00:e2:05:01";
    let vm = c.vm("once-1", mac, &server, REDIRECT_WITH_MAC);

    let mark = server.mark();
    let first = boot(&vm, c.dir.path());
    assert_booted(
        &first,
        &server,
        &c.tree,
        mark,
        &Who::Mac(mac.into()),
        &Expect::new("once", "once-mac", &once_entry, &once),
    );
    assert!(
        !c.tree.exists(&once_entry),
        "{once_entry} still exists after the once boot\ntree:\n{}",
        c.tree.listing()
    );
    let records = c.tree.names("once/.consumed");
    assert!(
        records.len() == 1 && records[0].ends_with(name),
        "want one record of {name} in once/.consumed/, found {records:?}\ntree:\n{}",
        c.tree.listing()
    );
    let record = c.tree.path(&format!("once/.consumed/{}", records[0]));
    // The record lies one directory deeper than the entry did: its relative link is
    // re-pointed so that it still leads to the once target.
    assert_eq!(
        std::fs::read_link(&record).ok(),
        Some(std::path::Path::new("..").join(&link_text)),
        "the consumed record's link is re-pointed from its new directory"
    );
    assert_eq!(
        std::fs::canonicalize(&record).ok(),
        std::fs::canonicalize(c.tree.path(&once)).ok(),
        "the consumed record still leads to the once target"
    );

    let mark = server.mark();
    let second = boot(
        &VmSpec {
            name: "once-2".into(),
            ..vm
        },
        c.dir.path(),
    );
    assert_booted(
        &second,
        &server,
        &c.tree,
        mark,
        &Who::Mac(mac.into()),
        &Expect::new("static", "static-mac", &format!("static/{name}"), &stat),
    );
    assert_eq!(
        c.tree.names("once/.consumed").len(),
        1,
        "the second boot consumed nothing"
    );
}

#[test]
#[cfg_attr(
    not(pxesrv_e2e),
    ignore = "end-to-end: boots QEMU VMs as root; run with PXESRV_E2E=1 cargo test --test e2e"
)]
fn once_by_ip_goes_to_exactly_one_of_two_simultaneous_boots() {
    let Some(c) = Case::new(
        "once_by_ip_goes_to_exactly_one_of_two_simultaneous_boots",
        &[Need::Qemu, Need::IpxeRom],
    ) else {
        return;
    };
    // User networking: both VMs reach the server as 127.0.0.1, so both match once/127.0.0.1,
    // and they ask for it at about the same moment. One boot may take it.
    let once = c.tree.marker_target("once-ip");
    let default = c.tree.marker_target("default");
    c.tree.link("default", &default);
    entry_link(&c.tree, "once/127.0.0.1", &once);
    let server = c.server();

    let macs = ["52:54:00:e2:0a:01", "52:54:00:e2:0a:02"];
    let mark = server.mark();
    let outs = boot_all(
        &[
            c.vm("race-1", macs[0], &server, REDIRECT_WITH_MAC),
            c.vm("race-2", macs[1], &server, REDIRECT_WITH_MAC),
        ],
        c.dir.path(),
    );
    let got_once: Vec<&str> =
        macs.iter()
            .copied()
            .filter(|mac| {
                server.boots_since(mark).iter().any(|e| {
                    Who::Mac(mac.to_string()).matches(e) && e.get("rule") == Some("once-ip")
                })
            })
            .collect();
    assert!(
        got_once.len() == 1,
        "want exactly one of {macs:?} booted by once/127.0.0.1, got {got_once:?}\n\
         server log:\n{}\ntree:\n{}",
        server.log_since(mark),
        c.tree.listing()
    );
    for (out, mac) in outs.iter().zip(macs) {
        let exp = if got_once == [mac] {
            Expect::new("once-ip", "once-ip", "once/127.0.0.1", &once)
        } else {
            Expect::new("default", "default", "default", &default)
        };
        assert_booted(out, &server, &c.tree, mark, &Who::Mac(mac.into()), &exp);
    }
    assert_eq!(
        c.tree.names("once/.consumed").len(),
        1,
        "one consumed record"
    );
}

#[test]
#[cfg_attr(
    not(pxesrv_e2e),
    ignore = "end-to-end: boots QEMU VMs as root; run with PXESRV_E2E=1 cargo test --test e2e"
)]
fn operator_changes_while_server_runs_take_effect_next_boot() {
    let Some(c) = Case::new(
        "operator_changes_while_server_runs_take_effect_next_boot",
        &[Need::Qemu, Need::IpxeRom],
    ) else {
        return;
    };
    // The operator's workflow, with the server running and having answered the client each
    // time (so whatever it caches about the entry is warm): the client boots its static
    // entry; `ln -s` schedules a one-time boot; then the static entry is re-pointed.
    let usual = c.tree.marker_target("usual");
    let one_time = c.tree.marker_target("one-time");
    let new_usual = c.tree.marker_target("new-usual");
    let name = "52-54-00-e2-0b-01";
    let static_entry = format!("static/{name}");
    entry_link(&c.tree, &static_entry, &usual);
    c.tree.link("default", &usual);
    let server = c.server();
    let mac = "52:54:00:e2:0b:01";
    let who = Who::Mac(mac.into());
    let vm = |boot_name: &str| c.vm(boot_name, mac, &server, REDIRECT_WITH_MAC);

    let mark = server.mark();
    let out = boot(&vm("usual"), c.dir.path());
    let exp = Expect::new("usual", "static-mac", &static_entry, &usual);
    assert_booted(&out, &server, &c.tree, mark, &who, &exp);

    entry_link(&c.tree, &format!("once/{name}"), &one_time);
    let mark = server.mark();
    let out = boot(&vm("one-time"), c.dir.path());
    let exp = Expect::new("one-time", "once-mac", &format!("once/{name}"), &one_time);
    assert_booted(&out, &server, &c.tree, mark, &who, &exp);

    c.tree.relink(&static_entry, &format!("../{new_usual}"));
    let mark = server.mark();
    let out = boot(&vm("new-usual"), c.dir.path());
    let exp = Expect::new("new-usual", "static-mac", &static_entry, &new_usual);
    assert_booted(&out, &server, &c.tree, mark, &who, &exp);
}

#[test]
#[cfg_attr(
    not(pxesrv_e2e),
    ignore = "end-to-end: boots QEMU VMs as root; run with PXESRV_E2E=1 cargo test --test e2e"
)]
fn script_in_subdirectory_chains_relative_file() {
    let Some(c) = Case::new(
        "script_in_subdirectory_chains_relative_file",
        &[Need::Qemu, Need::IpxeRom],
    ) else {
        return;
    };
    // menus/pick.ipxe says `chain rel.bin`. Answered at /redirect, iPXE alone would fetch
    // /rel.bin, the decoy; the server must make it /menus/rel.bin.
    c.tree
        .file(
            "menus/pick.ipxe",
            "#!ipxe\necho pxesrv-e2e menu in a subdirectory\nchain rel.bin\n",
        )
        .file("menus/rel.bin", harness::marker::sector("menus-rel"))
        .file("rel.bin", harness::marker::sector("root-decoy"));
    let default = c.tree.marker_target("default");
    c.tree.link("default", &default);
    let name = "52-54-00-e2-06-01";
    c.tree.link(&format!("static/{name}"), "../menus/pick.ipxe");
    let server = c.server();

    let mac = "52:54:00:e2:06:01";
    let mark = server.mark();
    let out = boot(
        &c.vm("relative", mac, &server, REDIRECT_WITH_MAC),
        c.dir.path(),
    );
    assert_booted(
        &out,
        &server,
        &c.tree,
        mark,
        &Who::Mac(mac.into()),
        &Expect::new(
            "menus-rel",
            "static-mac",
            &format!("static/{name}"),
            "menus/pick.ipxe",
        ),
    );
    assert_eq!(
        server.downloads_since(mark),
        ["/menus/rel.bin"],
        "the relative chain must download /menus/rel.bin (and nothing else)\nserver log:\n{}",
        server.log_since(mark)
    );
}

/// Disks for SAN boot over HTTP: see `Tree::marker_disk`.
const DISK_SIZE: u64 = 64 << 20;

#[test]
#[cfg_attr(
    not(pxesrv_e2e),
    ignore = "end-to-end: boots QEMU VMs as root; run with PXESRV_E2E=1 cargo test --test e2e"
)]
fn sanboot_over_http_from_plain_files() {
    let Some(c) = Case::new(
        "sanboot_over_http_from_plain_files",
        &[Need::Qemu, Need::IpxeRom],
    ) else {
        return;
    };
    // Diskless without iSCSI: iPXE reads a disk image from the plain files with HTTP range
    // requests and boots its first sector.
    c.tree
        .marker_disk("disks/root.img", "http-disk", DISK_SIZE)
        .file(
            "targets/san.ipxe",
            "#!ipxe\nsanboot /disks/root.img || echo pxesrv-e2e sanboot failed\n",
        )
        .link("default", "targets/san.ipxe");
    let server = c.server();

    let mac = "52:54:00:e2:0e:01";
    let mark = server.mark();
    let out = boot(
        &c.vm("http-disk", mac, &server, REDIRECT_WITH_MAC),
        c.dir.path(),
    );
    assert_booted(
        &out,
        &server,
        &c.tree,
        mark,
        &Who::Mac(mac.into()),
        &Expect::new("http-disk", "default", "default", "targets/san.ipxe"),
    );
    let downloads = server.downloads_since(mark);
    assert!(
        !downloads.is_empty() && downloads.iter().all(|p| p == "/disks/root.img"),
        "the disk is read from /disks/root.img only, got {downloads:?}\nserver log:\n{}",
        server.log_since(mark)
    );
}

#[test]
#[cfg_attr(
    not(pxesrv_e2e),
    ignore = "end-to-end: boots QEMU VMs as root; run with PXESRV_E2E=1 cargo test --test e2e"
)]
fn relative_sanboot_in_subdirectory_script() {
    let Some(c) = Case::new(
        "relative_sanboot_in_subdirectory_script",
        &[Need::Qemu, Need::IpxeRom],
    ) else {
        return;
    };
    // As `chain rel.bin` in scenario 4, but with `sanboot disk.img`: iPXE resolves the SAN
    // URI against the script's URI too, so answered at /redirect it would open /disk.img,
    // the decoy, unless the server rebases it to /menus/disk.img.
    c.tree
        .marker_disk("menus/disk.img", "menus-disk", DISK_SIZE)
        .marker_disk("disk.img", "root-decoy-disk", DISK_SIZE)
        .file(
            "menus/san.ipxe",
            "#!ipxe\nsanboot disk.img || echo pxesrv-e2e sanboot failed\n",
        )
        .link("default", "menus/san.ipxe");
    let server = c.server();

    let mac = "52:54:00:e2:0f:01";
    let mark = server.mark();
    let out = boot(
        &c.vm("relative-san", mac, &server, REDIRECT_WITH_MAC),
        c.dir.path(),
    );
    assert_booted(
        &out,
        &server,
        &c.tree,
        mark,
        &Who::Mac(mac.into()),
        &Expect::new("menus-disk", "default", "default", "menus/san.ipxe"),
    );
}

#[test]
#[cfg_attr(
    not(pxesrv_e2e),
    ignore = "end-to-end: boots QEMU VMs as root; run with PXESRV_E2E=1 cargo test --test e2e"
)]
fn namespace_dnsmasq_clients_boot_by_their_real_addresses() {
    let Some(c) = Case::new(
        "namespace_dnsmasq_clients_boot_by_their_real_addresses",
        &[
            Need::Qemu,
            Need::IpxeRom,
            Need::Dnsmasq,
            Need::Ip,
            Need::Root,
        ],
    ) else {
        return;
    };
    let (ip_a, ip_b) = ("10.77.0.61", "10.77.0.62");
    let (mac_a, mac_b, mac_c) = (
        "52:54:00:e2:07:01",
        "52:54:00:e2:07:02",
        "52:54:00:e2:07:03",
    );
    let a = c.tree.marker_target("ns-a");
    let b = c.tree.marker_target("ns-b");
    let default = c.tree.marker_target("default");
    c.tree.link("default", &default);
    entry_link(&c.tree, &format!("static/{ip_a}"), &a);
    entry_link(&c.tree, &format!("static/{ip_b}"), &b);

    // Declared in start order, so dropped in reverse: VMs are done, then dnsmasq and the
    // server stop, then the namespace goes.
    let mut ns = Netns::create();
    let tap_a = ns.add_tap();
    let tap_b = ns.add_tap();
    let tap_c = ns.add_tap();
    let server = Server::start(
        ServerSpec::pxesrv(
            c.tree.root(),
            &[&format!("{BRIDGE_IP}:0")],
            &c.dir.path().join("pxesrv.log"),
        )
        .in_netns(&ns),
    );
    let url = format!("{}{REDIRECT_WITH_MAC}", server.url_via(BRIDGE_IP));
    let dnsmasq = Dnsmasq::start(&ns, &url, &[(mac_a, ip_a), (mac_b, ip_b)], c.dir.path());

    let mark = server.mark();
    let outs = boot_all(
        &[
            VmSpec::tap("ns-a", mac_a, ns.name(), &tap_a),
            VmSpec::tap("ns-b", mac_b, ns.name(), &tap_b),
            // Not pinned: an address from the pool, for which there is no entry.
            VmSpec::tap("ns-c", mac_c, ns.name(), &tap_c),
        ],
        c.dir.path(),
    );
    let dhcp_log = dnsmasq.log();
    for (out, ip, marker, target) in [(&outs[0], ip_a, "ns-a", &a), (&outs[1], ip_b, "ns-b", &b)] {
        assert_booted(
            out,
            &server,
            &c.tree,
            mark,
            &Who::Client(ip.into()),
            &Expect::new(marker, "static-ip", &format!("static/{ip}"), target).client(ip),
        );
        // The address came from dnsmasq, which recognised iPXE by option 175.
        assert!(
            dnsmasq_acked_ipxe(&dhcp_log, ip, &out.mac),
            "dnsmasq log has no DHCPACK of {ip} to {} tagged ipxe (option 175):\n{dhcp_log}",
            out.mac
        );
    }
    let ev = assert_booted(
        &outs[2],
        &server,
        &c.tree,
        mark,
        &Who::Mac(mac_c.into()),
        &Expect::new("default", "default", "default", &default),
    );
    let ip_c = ev.get("client").unwrap_or_default();
    let in_pool = ip_c
        .strip_prefix("10.77.0.")
        .and_then(|host| host.parse::<u8>().ok())
        .is_some_and(|host| (50..=90).contains(&host));
    assert!(
        in_pool && dnsmasq_acked_ipxe(&dhcp_log, ip_c, mac_c),
        "the unpinned client booted as {ip_c}, not an address dnsmasq leased it from \
         10.77.0.50-90:\n{dhcp_log}"
    );
}

/// Whether dnsmasq's `--log-dhcp` output shows `ip` acknowledged to `mac` in a transaction
/// whose tags include `ipxe` (`NNN tags: known, ipxe, br0` ... `NNN DHCPACK(br0) IP MAC`).
fn dnsmasq_acked_ipxe(log: &str, ip: &str, mac: &str) -> bool {
    let xid = |line: &str| line.split_whitespace().nth(4).map(String::from);
    let ack = format!("DHCPACK(br0) {ip} {mac}");
    log.lines()
        .filter(|l| l.contains(&ack))
        .filter_map(xid)
        .any(|id| {
            log.lines().any(|l| {
                xid(l).as_deref() == Some(id.as_str())
                    && l.split_once("tags:")
                        .is_some_and(|(_, tags)| tags.split(',').any(|t| t.trim() == "ipxe"))
            })
        })
}

#[test]
#[cfg_attr(
    not(pxesrv_e2e),
    ignore = "end-to-end: boots QEMU VMs as root; run with PXESRV_E2E=1 cargo test --test e2e"
)]
fn mac_bootstrap_without_mac_in_bootfile() {
    let Some(c) = Case::new(
        "mac_bootstrap_without_mac_in_bootfile",
        &[Need::Qemu, Need::IpxeRom],
    ) else {
        return;
    };
    let by_mac = c.tree.marker_target("bootstrap-mac");
    let default = c.tree.marker_target("default");
    c.tree.link("default", &default);
    let name = "52-54-00-e2-08-01";
    entry_link(&c.tree, &format!("static/{name}"), &by_mac);
    let server = c.server();

    // The boot file says nothing about the MAC: only the server's bootstrap script can
    // ask iPXE for it.
    let mac = "52:54:00:e2:08:01";
    let mark = server.mark();
    let out = boot(&c.vm("bootstrap", mac, &server, "/redirect"), c.dir.path());
    // First the MAC-less request, answered with the bootstrap script...
    let bootstraps = server.wait_events(mark, Duration::from_secs(3), |e| {
        e.get("rule") == Some("mac-bootstrap")
    });
    assert!(
        bootstraps.len() == 1,
        "want one mac-bootstrap answer, got {}\nserver log:\n{}",
        bootstraps.len(),
        server.log_since(mark)
    );
    // ... then the boot, by the MAC iPXE sent back.
    assert_booted(
        &out,
        &server,
        &c.tree,
        mark,
        &Who::Mac(mac.into()),
        &Expect::new(
            "bootstrap-mac",
            "static-mac",
            &format!("static/{name}"),
            &by_mac,
        ),
    );
}

#[test]
#[cfg_attr(
    not(pxesrv_e2e),
    ignore = "end-to-end: boots QEMU VMs as root; run with PXESRV_E2E=1 cargo test --test e2e"
)]
fn mac_bootstrap_names_the_nic_that_boots() {
    let Some(c) = Case::new(
        "mac_bootstrap_names_the_nic_that_boots",
        &[Need::Qemu, Need::IpxeRom],
    ) else {
        return;
    };
    // A two-NIC machine whose first NIC gets no boot file: the firmware moves on and boots
    // from the second. The bootstrap must report the second NIC's MAC, not net0's.
    let by_second = c.tree.marker_target("second-nic");
    let by_first = c.tree.marker_target("first-nic");
    let default = c.tree.marker_target("default");
    c.tree.link("default", &default);
    let (first, second) = ("52:54:00:e2:0c:01", "52:54:00:e2:0c:02");
    entry_link(&c.tree, "static/52-54-00-e2-0c-01", &by_first);
    entry_link(&c.tree, "static/52-54-00-e2-0c-02", &by_second);
    let server = c.server();

    let mut vm = c.vm("second-nic", second, &server, "/redirect");
    vm.first_nics.push((first.into(), Net::NoBoot));
    let mark = server.mark();
    let out = boot(&vm, c.dir.path());
    assert_booted(
        &out,
        &server,
        &c.tree,
        mark,
        &Who::Mac(second.into()),
        &Expect::new(
            "second-nic",
            "static-mac",
            "static/52-54-00-e2-0c-02",
            &by_second,
        ),
    );
}

#[test]
#[cfg_attr(
    not(pxesrv_e2e),
    ignore = "end-to-end: boots QEMU VMs as root; run with PXESRV_E2E=1 cargo test --test e2e"
)]
fn dangling_once_link_falls_through() {
    let Some(c) = Case::new(
        "dangling_once_link_falls_through",
        &[Need::Qemu, Need::IpxeRom],
    ) else {
        return;
    };
    let stat = c.tree.marker_target("after-dangling");
    let default = c.tree.marker_target("default");
    c.tree.link("default", &default);
    let name = "52-54-00-e2-09-01";
    let once_entry = format!("once/{name}");
    c.tree.link(&once_entry, "../targets/removed-image.ipxe");
    entry_link(&c.tree, &format!("static/{name}"), &stat);
    let server = c.server();

    let mac = "52:54:00:e2:09:01";
    let mark = server.mark();
    let out = boot(
        &c.vm("dangling", mac, &server, REDIRECT_WITH_MAC),
        c.dir.path(),
    );
    assert_booted(
        &out,
        &server,
        &c.tree,
        mark,
        &Who::Mac(mac.into()),
        &Expect::new(
            "after-dangling",
            "static-mac",
            &format!("static/{name}"),
            &stat,
        ),
    );
    assert!(
        c.tree.exists(&once_entry) && c.tree.names("once/.consumed").is_empty(),
        "a dangling once link must stay unconsumed\ntree:\n{}",
        c.tree.listing()
    );
    // The operator learns why the once entry was passed over.
    let warned = server.events_since(mark).into_iter().any(|e| {
        e.level == "WARN"
            && Who::Mac(mac.into()).matches(&e)
            && e.get("entry") == Some(once_entry.as_str())
    });
    assert!(
        warned,
        "no WARN line about {once_entry} for this client\nserver log:\n{}",
        server.log_since(mark)
    );
}
