// Command sluice-checks runs, against Sluice's manifests and real status objects, the same code
// the ecosystem runs: kstatus (what Flux's health checks and kpt compute), Argo CD-style Lua health
// scripts (gopher-lua, the interpreter Argo CD embeds), and the Operator Framework's bundle
// validators (what `operator-sdk bundle validate` runs).
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 3 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "kstatus":
		err = kstatus(os.Args[2:])
	case "lua":
		if len(os.Args) < 4 {
			usage()
		}
		err = luaHealth(os.Args[2], os.Args[3:])
	case "olm":
		err = olm(os.Args[2])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "sluice-checks:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: sluice-checks kstatus OBJECT.json... | lua HEALTH.lua OBJECT.json... | olm BUNDLE_DIR")
	os.Exit(2)
}
