// cnidriver: the reference libcni driving a network configuration list, as
// a container runtime does. Built in GOPATH mode against Debian's
// golang-github-appc-cni-dev (no module download).
//
//	cnidriver VERB CONFLIST CONTAINER_ID NETNS IFNAME CACHE_DIR BIN_DIR...
//
// VERB: add (prints the result), check, del, validate (VERSION of every
// plugin; prints the capabilities), cached (prints the cached result).
// Errors: the plugin's code and message as JSON on stdout, exit status 1.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

func fail(err error) {
	out := map[string]interface{}{"msg": err.Error()}
	var e *types.Error
	if errors.As(err, &e) { // libcni wraps the plugin's error with its name
		out["code"] = e.Code
		out["msg"] = e.Msg
		out["details"] = e.Details
	}
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
	os.Exit(1)
}

func show(v interface{}) {
	b, err := json.Marshal(v)
	if err != nil {
		fail(err)
	}
	fmt.Println(string(b))
}

func main() {
	if len(os.Args) < 8 {
		fmt.Fprintln(os.Stderr, "usage: cnidriver VERB CONFLIST CONTAINER_ID NETNS IFNAME CACHE_DIR BIN_DIR...")
		os.Exit(2)
	}
	verb, path := os.Args[1], os.Args[2]
	rt := &libcni.RuntimeConf{
		ContainerID: os.Args[3],
		NetNS:       os.Args[4],
		IfName:      os.Args[5],
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", "ims"},
			{"K8S_POD_NAME", "cscf-0"},
		},
	}
	cni := libcni.NewCNIConfigWithCacheDir(os.Args[7:], os.Args[6], nil)
	list, err := libcni.ConfListFromFile(path)
	if err != nil {
		fail(err)
	}
	ctx := context.Background()
	switch verb {
	case "add":
		res, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail(err)
		}
		show(res)
	case "check":
		if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	case "del":
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	case "validate":
		caps, err := cni.ValidateNetworkList(ctx, list)
		if err != nil {
			fail(err)
		}
		show(caps)
	case "cached":
		res, err := cni.GetNetworkListCachedResult(list, rt)
		if err != nil {
			fail(err)
		}
		show(res)
	default:
		fmt.Fprintln(os.Stderr, "unknown verb", verb)
		os.Exit(2)
	}
}
