// Package completion writes bash and zsh completion scripts for
// pull-agent from the commands' real flag sets, so the scripts cannot
// drift from the code: Build runs each command of a small spec with -h
// and an output writer that observes the flag sets the command makes
// (cliconf.FlagSetObserver), and Bash and Zsh render the tree.
//
// A script completes command and subcommand words, the flags of the
// command typed so far (--name; zsh with each flag's help), fixed
// arguments (completion bash|zsh, master token add|list|revoke), and file
// names for a flag's value and for other arguments.
//
// # Boundaries
//
// It knows no command: the caller gives the spec and the probe.
package completion
