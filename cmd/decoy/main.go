// Command decoy is the tiny service program baked into the example fleet's
// images. It is not part of the agent: it stands in for DECNET's real
// service containers so that the demo and the end-to-end tests can build
// every image offline from a static binary in a FROM scratch image.
//
// Modes (first argument):
//
//	hold          block until SIGTERM/SIGINT (the decky's base container)
//	serve         answer on DECOY_PORTS with a protocol-flavoured banner
//	exit N        exit at once with status N (a deliberately broken service)
//	netless       exit 0 when the only network interface is loopback, else 1
//	              (a Dockerfile RUN step proving the build had no network)
//
// serve reads its persona from the environment, which the agent fills from
// the fleet repo's service_config:
//
//	DECOY_PORTS   comma-separated TCP ports, e.g. "22" or "80,8080"
//	DECOY_PROTO   ssh|http|ftp|smtp|telnet|generic (default generic)
//	DECOY_BANNER  banner line; protocol default when empty
//	HOSTNAME      used in SMTP/FTP greetings
//
// To let the end-to-end tests see what a decoy really holds (not only what
// the Engine was asked for), serve first writes one line to stderr with
// the process's effective capabilities and no-new-privileges flag, as the
// kernel reports them in /proc/self/status:
//
//	decoy: privileges CapEff=00000000a80425fb NoNewPrivs=1
//
// To test the LAN check, DECOY_PORTS may differ from the ports the
// catalog declares (a service declaring 22 that listens on 2222).
package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	os.Exit(run(ctx, os.Args[1:]))
}

func run(ctx context.Context, args []string) int {
	mode := "serve"
	if len(args) > 0 {
		mode = args[0]
	}
	switch mode {
	case "hold":
		<-ctx.Done()
		return 0
	case "exit":
		code := 1
		if len(args) > 1 {
			if n, err := strconv.Atoi(args[1]); err == nil {
				code = n
			}
		}
		fmt.Fprintf(os.Stderr, "decoy: exiting with status %d as configured\n", code)
		return code
	case "netless":
		ifs, err := net.Interfaces()
		if err != nil {
			fmt.Fprintf(os.Stderr, "decoy: %v\n", err)
			return 1
		}
		var found []string
		for _, i := range ifs {
			if i.Flags&net.FlagLoopback == 0 {
				found = append(found, i.Name)
			}
		}
		if len(found) > 0 {
			fmt.Fprintf(os.Stderr, "decoy: this step has a network: %v\n", found)
			return 1
		}
		return 0
	case "serve":
		fmt.Fprintf(os.Stderr, "decoy: privileges %s\n", privileges())
		if err := serve(ctx, persona{
			ports:    os.Getenv("DECOY_PORTS"),
			proto:    os.Getenv("DECOY_PROTO"),
			banner:   os.Getenv("DECOY_BANNER"),
			hostname: os.Getenv("HOSTNAME"),
		}); err != nil {
			fmt.Fprintf(os.Stderr, "decoy: %v\n", err)
			return 1
		}
		return 0
	default:
		fmt.Fprintf(os.Stderr, "decoy: unknown mode %q (want hold, serve, exit or netless)\n", mode)
		return 2
	}
}

// privileges returns the CapEff and NoNewPrivs lines of /proc/self/status.
func privileges() string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return "unknown: " + err.Error()
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && (k == "CapEff" || k == "NoNewPrivs") {
			out = append(out, k+"="+strings.TrimSpace(v))
		}
	}
	return strings.Join(out, " ")
}

type persona struct {
	ports, proto, banner, hostname string
}

func (p persona) greeting() string {
	if p.banner != "" {
		return p.banner
	}
	host := p.hostname
	if host == "" {
		host = "localhost"
	}
	switch p.proto {
	case "ssh":
		return "SSH-2.0-OpenSSH_8.9p1 Ubuntu-3ubuntu0.6"
	case "ftp":
		return "220 (vsFTPd 3.0.5)"
	case "smtp":
		return "220 " + host + " ESMTP Postfix (Ubuntu)"
	case "telnet":
		return host + " login:"
	case "http":
		return "nginx/1.18.0 (Ubuntu)"
	default:
		return "220 " + host + " service ready"
	}
}

func serve(ctx context.Context, p persona) error {
	var ports []int
	for _, f := range strings.Split(p.ports, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("DECOY_PORTS: %q is not a TCP port", f)
		}
		ports = append(ports, n)
	}
	if len(ports) == 0 {
		return fmt.Errorf("DECOY_PORTS is empty: nothing to serve")
	}
	var wg sync.WaitGroup
	var lns []net.Listener
	for _, port := range ports {
		ln, err := net.Listen("tcp", ":"+strconv.Itoa(port))
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return err
		}
		lns = append(lns, ln)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go p.handle(c)
			}
		}()
	}
	fmt.Fprintf(os.Stderr, "decoy: %s persona listening on %v\n", p.protoName(), ports)
	<-ctx.Done()
	for _, l := range lns {
		l.Close()
	}
	wg.Wait()
	return nil
}

func (p persona) protoName() string {
	if p.proto == "" {
		return "generic"
	}
	return p.proto
}

// handle speaks just enough of each protocol for a scanner's banner grab.
func (p persona) handle(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if p.proto == "http" {
		// HTTP clients talk first; answer whatever request line arrives.
		r := bufio.NewReader(c)
		if _, err := r.ReadString('\n'); err != nil {
			return
		}
		body := "<html><body><h1>It works!</h1></body></html>\n"
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nServer: %s\r\nContent-Type: text/html\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
			p.greeting(), len(body), body)
		return
	}
	fmt.Fprintf(c, "%s\r\n", p.greeting())
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		cmd := strings.ToUpper(strings.TrimSpace(line))
		switch {
		case strings.HasPrefix(cmd, "QUIT"):
			fmt.Fprint(c, "221 Bye\r\n")
			return
		case p.proto == "ssh":
			return // a real sshd would start key exchange; hang up instead
		default:
			fmt.Fprint(c, "500 Command not understood\r\n")
		}
	}
}
