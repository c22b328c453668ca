package netmanager

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/oakwire/oakwire/ipam"
)

// nftTable is the only nftables table the daemon creates or deletes.
const nftTable = "oakwire"

// nftRuleset renders the whole "oakwire" table. It is applied as one nft
// transaction that first deletes the table, so it is idempotent and the
// kernel never holds half of it.
func nftRuleset(cfg *Config, sub ipam.SubnetPair, ctrs []*Container) string {
	var b strings.Builder
	p4, p6 := cfg.platforms()
	node := cfg.nodeAddr()
	fam, nodeFam := "ip", "ip"
	if node.Is6() {
		fam, nodeFam = "ip6", "ip6"
	}
	fmt.Fprintf(&b, "table inet %s\ndelete table inet %s\ntable inet %s {\n", nftTable, nftTable, nftTable)
	var dnat strings.Builder
	for _, c := range ctrs {
		dst := c.NSIP4.String()
		if node.Is6() {
			dst = "[" + c.NSIP6.String() + "]"
		}
		for _, m := range c.PortMappings {
			fmt.Fprintf(&dnat, "\t\t%s daddr %s %s dport %d dnat %s to %s:%d comment \"%s\"\n",
				nodeFam, node, m.Proto, m.HostPort, fam, dst, m.ContainerPort, ownerOf(c.Job, c.Instance))
		}
	}
	b.WriteString("\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n")
	b.WriteString(dnat.String())
	b.WriteString("\t}\n")
	b.WriteString("\tchain output {\n\t\ttype nat hook output priority -100; policy accept;\n")
	b.WriteString(dnat.String())
	b.WriteString("\t}\n")
	b.WriteString("\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n")
	fmt.Fprintf(&b, "\t\toifname %q ip saddr %s ip daddr != %s masquerade\n", cfg.Uplink, sub.V4, p4)
	fmt.Fprintf(&b, "\t\toifname %q ip6 saddr %s ip6 daddr != %s masquerade\n", cfg.Uplink, sub.V6, p6)
	b.WriteString("\t}\n")
	writeIsolation(&b, cfg, p4, p6, ctrs)
	b.WriteString("}\n")
	return b.String()
}

// writeIsolation renders the filter chains of SPEC §7.2 isolation that
// the kernel enforces (docs/design.md "Threat model"): forwarded traffic
// may reach a container only from another container on this node, as a
// port mapping (DNAT in prerouting), or as a reply on a connection a
// container opened (masquerade); the platform ranges are unreachable from
// the underlay otherwise (namespace IPs are internal), also on the node
// itself (the gateway addresses). Tunnel traffic never passes here: the
// data path delivers it to the container port directly. Every drop rule
// counts; `nft list table inet oakwire` shows the counters.
func writeIsolation(b *strings.Builder, cfg *Config, p4, p6 netip.Prefix, ctrs []*Container) {
	b.WriteString("\tset ports {\n\t\ttype ifname\n")
	if len(ctrs) > 0 {
		names := make([]string, len(ctrs))
		for i, c := range ctrs {
			names[i] = strconv.Quote(c.HostIf)
		}
		fmt.Fprintf(b, "\t\telements = { %s }\n", strings.Join(names, ", "))
	}
	b.WriteString("\t}\n")
	b.WriteString("\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n")
	b.WriteString("\t\tiifname @ports accept\n")
	b.WriteString("\t\tct status dnat accept\n")
	b.WriteString("\t\tct state established,related accept\n")
	fmt.Fprintf(b, "\t\tip daddr %s counter drop comment \"underlay to platform\"\n", p4)
	fmt.Fprintf(b, "\t\tip6 daddr %s counter drop comment \"underlay to platform\"\n", p6)
	b.WriteString("\t}\n")
	b.WriteString("\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n")
	b.WriteString("\t\tiifname \"lo\" accept\n")
	fmt.Fprintf(b, "\t\tiifname @ports udp dport %d counter drop comment \"container to tunnel port\"\n", cfg.TunnelPort)
	b.WriteString("\t\tiifname @ports accept\n")
	fmt.Fprintf(b, "\t\tip daddr %s counter drop comment \"underlay to platform\"\n", p4)
	fmt.Fprintf(b, "\t\tip6 daddr %s counter drop comment \"underlay to platform\"\n", p6)
	b.WriteString("\t}\n")
}
