// Command pause is the sandbox ("pause") image of the test cluster and the
// entrypoint of its sample workload images: a static binary that waits for
// SIGTERM or SIGINT and exits 0. With the argument "exit" it exits 0 at once
// (an init container that completes). Built with CGO_ENABLED=0 by
// devenv/cluster.py, so the images need nothing but this file.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "exit" {
		fmt.Println("pause: done")
		return
	}
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	fmt.Println("pause: waiting for a signal")
	got := <-signals
	fmt.Printf("pause: %v, exiting\n", got)
}
