// Minimal CoreDNS for the local e2e node: only the plugins the cluster Corefile uses.
// Plugins are linked by the blank imports below; dnsserver.Directives lists the usable
// directives in execution order (a subset of CoreDNS's plugin.cfg / core/dnsserver/zdirectives.go,
// same relative order). There is deliberately NO `forward` (nor any other upstream plugin):
// pods must never send DNS queries off this machine; names outside the cluster zones fail.
// Built by hack/build-control-plane.sh --node.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

// directives, in the canonical relative order of zdirectives.go.
var directives = []string{
	"bind",
	"ready",
	"health",
	"errors",
	"log",
	"cache",
	"kubernetes",
}

func main() {
	dnsserver.Directives = directives
	coremain.Run()
}
