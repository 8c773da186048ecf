// Command hostel runs many web apps on one machine, the Nix way.
package main

import (
	"os"

	"hostel/internal/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:])) }
