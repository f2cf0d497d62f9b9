// libcni-driver runs a CNI conflist through libcni, the library containerd
// 1.7 and CRI-O use, so strake's conflists are tested against a real
// runtime's parser and result handling, not only strake's own executor.
// Built from Debian's golang-github-appc-cni-dev by userspace/lab/tests/cni.rs.
//
// usage: libcni-driver validate|add|check|del CONFLIST CACHE_DIR CONTAINER_ID NETNS IFNAME [K=V ...]
// Plugins are found in $CNI_PATH; $CAPABILITY_ARGS, if set, is the JSON object
// of runtime capability arguments (portMappings, bandwidth, ...). ADD prints the result JSON on stdout; an
// error prints the plugin's or libcni's message on stderr and exits 1.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
)

func main() {
	if len(os.Args) < 7 {
		fmt.Fprintln(os.Stderr, "usage: libcni-driver validate|add|check|del CONFLIST CACHE_DIR CONTAINER_ID NETNS IFNAME [K=V ...]")
		os.Exit(2)
	}
	cmd, listPath, cacheDir := os.Args[1], os.Args[2], os.Args[3]
	list, err := libcni.ConfListFromFile(listPath)
	if err != nil {
		fail("reading %s: %v", listPath, err)
	}
	cni := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(os.Getenv("CNI_PATH")), cacheDir, nil)
	rt := &libcni.RuntimeConf{ContainerID: os.Args[4], NetNS: os.Args[5], IfName: os.Args[6]}
	for _, kv := range os.Args[7:] {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			fail("argument %q is not K=V", kv)
		}
		rt.Args = append(rt.Args, [2]string{k, v})
	}
	if caps := os.Getenv("CAPABILITY_ARGS"); caps != "" {
		if err := json.Unmarshal([]byte(caps), &rt.CapabilityArgs); err != nil {
			fail("CAPABILITY_ARGS: %v", err)
		}
	}
	ctx := context.Background()
	switch cmd {
	case "validate":
		if _, err := cni.ValidateNetworkList(ctx, list); err != nil {
			fail("VALIDATE: %v", err)
		}
	case "add":
		res, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail("ADD: %v", err)
		}
		if err := res.Print(); err != nil {
			fail("printing the result: %v", err)
		}
	case "check":
		if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			fail("CHECK: %v", err)
		}
	case "del":
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			fail("DEL: %v", err)
		}
	default:
		fail("unknown command %q", cmd)
	}
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}
