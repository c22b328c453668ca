package netmanager

import (
	"fmt"
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
	b.WriteString("\t}\n}\n")
	return b.String()
}
