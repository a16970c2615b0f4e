// fanoutcheck is an independent fan-out harness used to check msgc-bench's drivers
// (benches/check-drivers.sh). It shares no code with msgc-bench: for NATS it uses the Go
// NATS client (Debian's golang-github-nats-io-go-nats-dev) for its publisher and
// subscribers; for Redis it only subscribes (a minimal RESP reader) while redis-benchmark
// publishes; for msgc it speaks the wire protocol as docs/protocol.md describes it, with a
// plain buffered reader per subscriber. Deliveries are counted by receive time over a
// window that starts after a warm-up, and one JSON line is printed on stdout.
//
// Build offline against Debian's packaged module sources:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o fanoutcheck benches/fanoutcheck/main.go
package main

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/debug"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
)

type result struct {
	System       string  `json:"system"`
	Subscribers  int     `json:"subscribers"`
	Size         int     `json:"size"`
	DurationS    float64 `json:"duration_s"`
	Published    float64 `json:"published_msgs_per_s"`
	Delivered    float64 `json:"delivered_msgs_per_s"`
	Disconnects  int64   `json:"disconnects"`
	SlowConsumer int64   `json:"slow_consumer_errors"`
	// This process's CPU over the window (100 = one core).
	CPUPercent float64 `json:"client_cpu_percent"`
}

var (
	system   = flag.String("system", "nats", "nats, redis or msgc")
	addr     = flag.String("addr", "127.0.0.1:4222", "server HOST:PORT")
	subs     = flag.Int("subs", 8, "subscribers")
	size     = flag.Int("size", 128, "payload bytes")
	duration = flag.Float64("duration", 5, "measured seconds")
	warmup   = flag.Float64("warmup", 1, "seconds before measuring")
	rate     = flag.Float64("rate", 0, "NATS: messages per second to publish; 0 = as fast as possible")
	gcPct    = flag.Int("gogc", 1000, "garbage collector target percentage (the NATS client allocates per message; a high value keeps collection from dominating)")
	subject  = flag.String("subject", "bench.g0", "subject or channel")
	setup    = flag.Duration("setup", 30*time.Second, "longest wait for subscriptions and first traffic")
	sndbuf   = flag.Int("sndbuf", 0, "msgc: the publisher's SO_SNDBUF in bytes (0 = the kernel's autotuning)")
)

func fail(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, "fanoutcheck: "+format+"\n", a...)
	os.Exit(2)
}

func main() {
	flag.Parse()
	debug.SetGCPercent(*gcPct)
	if *subs < 1 || *size < 1 || *duration <= 0 || *warmup < 0 {
		fail("-subs and -size must be positive, -duration positive, -warmup not negative")
	}
	var r result
	switch *system {
	case "nats":
		r = runNats()
	case "redis":
		r = runRedis()
	case "msgc":
		r = runMsgc()
	default:
		fail("unknown -system %q (nats, redis or msgc)", *system)
	}
	r.System, r.Subscribers, r.Size, r.DurationS = *system, *subs, *size, *duration
	out, _ := json.Marshal(r)
	fmt.Println(string(out))
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// window waits out the warm-up, then returns how far each counter moved over the measured
// duration, and this process's CPU percentage over it.
func window(counters ...*uint64) ([]uint64, float64) {
	time.Sleep(time.Duration(*warmup * float64(time.Second)))
	before := make([]uint64, len(counters))
	for i, c := range counters {
		before[i] = atomic.LoadUint64(c)
	}
	cpu := cpuSeconds()
	time.Sleep(time.Duration(*duration * float64(time.Second)))
	moved := make([]uint64, len(counters))
	for i, c := range counters {
		moved[i] = atomic.LoadUint64(c) - before[i]
	}
	return moved, (cpuSeconds() - cpu) / *duration * 100
}

func runNats() result {
	var delivered, published uint64
	var disconnects, slow int64
	var closing int32
	opts := []nats.Option{
		nats.NoReconnect(),
		nats.DisconnectErrHandler(func(_ *nats.Conn, _ error) {
			if atomic.LoadInt32(&closing) == 0 {
				atomic.AddInt64(&disconnects, 1)
			}
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if err == nats.ErrSlowConsumer {
				atomic.AddInt64(&slow, 1)
			}
		}),
	}
	url := "nats://" + *addr
	var conns []*nats.Conn
	for i := 0; i < *subs; i++ {
		nc, err := nats.Connect(url, opts...)
		if err != nil {
			fail("subscriber %d: %v", i, err)
		}
		sub, err := nc.Subscribe(*subject, func(_ *nats.Msg) { atomic.AddUint64(&delivered, 1) })
		if err != nil {
			fail("subscribe: %v", err)
		}
		// No client-side limit: a message dropped by the client would not be the server's doing.
		if err := sub.SetPendingLimits(-1, -1); err != nil {
			fail("pending limits: %v", err)
		}
		if err := nc.FlushTimeout(*setup); err != nil {
			fail("subscription not confirmed: %v", err)
		}
		conns = append(conns, nc)
	}
	pub, err := nats.Connect(url, opts...)
	if err != nil {
		fail("publisher: %v", err)
	}
	conns = append(conns, pub)
	var stop int32
	done := make(chan struct{})
	go func() {
		defer close(done)
		payload := make([]byte, *size)
		began := time.Now()
		for atomic.LoadInt32(&stop) == 0 {
			n := 1000
			if *rate > 0 {
				// Paced: what is due by now, checked every millisecond.
				due := int(time.Since(began).Seconds() * *rate)
				n = due - int(atomic.LoadUint64(&published))
				if n <= 0 {
					if pub.Flush() != nil {
						return
					}
					time.Sleep(time.Millisecond)
					continue
				}
			}
			for k := 0; k < n; k++ {
				if pub.Publish(*subject, payload) != nil {
					return
				}
			}
			atomic.AddUint64(&published, uint64(n))
		}
	}()
	moved, cpu := window(&delivered, &published)
	atomic.StoreInt32(&stop, 1)
	<-done
	atomic.StoreInt32(&closing, 1)
	for _, nc := range conns {
		nc.Close()
	}
	return result{
		Published:    float64(moved[1]) / *duration,
		Delivered:    float64(moved[0]) / *duration,
		Disconnects:  atomic.LoadInt64(&disconnects),
		SlowConsumer: atomic.LoadInt64(&slow),
		CPUPercent:   cpu,
	}
}

// runRedis subscribes -subs connections, prints "ready" on stderr once every subscription
// is confirmed, waits for the first message (the publisher is started by the caller), and
// counts pushes by receive time.
func runRedis() result {
	var delivered uint64
	var disconnects int64
	var started int32
	first := make(chan struct{})
	for i := 0; i < *subs; i++ {
		c, err := net.Dial("tcp", *addr)
		if err != nil {
			fail("subscriber %d: %v", i, err)
		}
		fmt.Fprintf(c, "*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n", len(*subject), *subject)
		rd := bufio.NewReaderSize(c, 256*1024)
		c.SetReadDeadline(time.Now().Add(*setup))
		if kind, err := readPush(rd); err != nil || kind != "subscribe" {
			fail("subscription not confirmed: %q %v", kind, err)
		}
		c.SetReadDeadline(time.Time{})
		go func() {
			for {
				kind, err := readPush(rd)
				if err != nil {
					atomic.AddInt64(&disconnects, 1)
					return
				}
				if kind == message {
					atomic.AddUint64(&delivered, 1)
					if atomic.CompareAndSwapInt32(&started, 0, 1) {
						close(first)
					}
				}
			}
		}()
	}
	fmt.Fprintln(os.Stderr, "ready")
	select {
	case <-first:
	case <-time.After(*setup):
		fail("no message arrived within %v", *setup)
	}
	moved, cpu := window(&delivered)
	return result{Delivered: float64(moved[0]) / *duration, Disconnects: atomic.LoadInt64(&disconnects), CPUPercent: cpu}
}

const message = "message"

// readPush reads one RESP array of bulk strings or integers and returns its first element
// when it is short (a push kind); longer first elements are skipped.
func readPush(rd *bufio.Reader) (string, error) {
	line, err := rd.ReadSlice('\n')
	if err != nil {
		return "", err
	}
	if len(line) < 3 || line[0] != '*' {
		return "", fmt.Errorf("expected an array, got %q", line)
	}
	n, err := strconv.Atoi(string(line[1 : len(line)-2]))
	if err != nil {
		return "", err
	}
	var first string
	for i := 0; i < n; i++ {
		head, err := rd.ReadSlice('\n')
		if err != nil {
			return "", err
		}
		if len(head) < 3 {
			return "", fmt.Errorf("short element %q", head)
		}
		switch head[0] {
		case ':':
			continue
		case '$':
			size, err := strconv.Atoi(string(head[1 : len(head)-2]))
			if err != nil {
				return "", err
			}
			if i == 0 && size <= 16 {
				var b [18]byte
				if _, err := io.ReadFull(rd, b[:size+2]); err != nil {
					return "", err
				}
				first = string(b[:size])
			} else if _, err := rd.Discard(size + 2); err != nil {
				return "", err
			}
		default:
			return "", fmt.Errorf("unexpected element %q", head)
		}
	}
	return first, nil
}

// msgc frame kinds (docs/protocol.md).
const (
	msgcHello   = 0x01
	msgcWelcome = 0x02
	msgcJoin    = 0x03
	msgcMcast   = 0x10
	msgcView    = 0x11
	msgcError   = 0x06
)

func msgcHelloFrame(name string) []byte {
	body := make([]byte, 0, 34+len(name))
	body = append(body, msgcHello, 0, 'M', 'S', 'G', 'C', 0, 1, 1, byte(len(name)))
	body = append(body, make([]byte, 8+8+4)...) // id, digest, node tag
	body = binary.BigEndian.AppendUint32(body, 1<<20)
	body = append(body, name...)
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(body))), body...)
}

// msgcFrame reads one frame; the returned slice is valid until the next read.
func msgcFrame(rd *bufio.Reader, buf *[]byte) (byte, []byte, error) {
	var head [4]byte
	if _, err := io.ReadFull(rd, head[:]); err != nil {
		return 0, nil, err
	}
	n := int(binary.BigEndian.Uint32(head[:]))
	if n < 2 || n > 64<<20 {
		return 0, nil, fmt.Errorf("bad frame length %d", n)
	}
	if cap(*buf) < n {
		*buf = make([]byte, n)
	}
	b := (*buf)[:n]
	if _, err := io.ReadFull(rd, b); err != nil {
		return 0, nil, err
	}
	if b[0] == msgcError {
		return 0, nil, fmt.Errorf("server error frame %q", b)
	}
	return b[0], b, nil
}

// msgcConnect dials, says HELLO and returns the session id from WELCOME.
func msgcConnect(name string) (net.Conn, *bufio.Reader, uint64) {
	c, err := net.Dial("tcp", *addr)
	if err != nil {
		fail("%s: %v", name, err)
	}
	if _, err := c.Write(msgcHelloFrame(name)); err != nil {
		fail("%s: %v", name, err)
	}
	rd := bufio.NewReaderSize(c, 256*1024)
	var buf []byte
	c.SetReadDeadline(time.Now().Add(*setup))
	kind, b, err := msgcFrame(rd, &buf)
	if err != nil || kind != msgcWelcome || len(b) < 18 {
		fail("%s: no WELCOME: %v", name, err)
	}
	c.SetReadDeadline(time.Time{})
	// WELCOME body after the length: kind flags magic(4) version(2) role namelen id(8)...
	return c, rd, binary.BigEndian.Uint64(b[10:18])
}

func runMsgc() result {
	var delivered, published uint64
	var disconnects int64
	var stop int32
	ready := make(chan struct{}, *subs**subs)
	for i := 0; i < *subs; i++ {
		c, rd, _ := msgcConnect(fmt.Sprintf("check-sub%d", i))
		join := append([]byte{msgcJoin, 0, byte(len(*subject))}, *subject...)
		if _, err := c.Write(append(binary.BigEndian.AppendUint32(nil, uint32(len(join))), join...)); err != nil {
			fail("join: %v", err)
		}
		go func() {
			var buf []byte
			for {
				kind, b, err := msgcFrame(rd, &buf)
				if err != nil {
					if atomic.LoadInt32(&stop) == 0 {
						atomic.AddInt64(&disconnects, 1)
					}
					return
				}
				switch {
				case kind == msgcMcast:
					atomic.AddUint64(&delivered, 1)
				case kind == msgcView && len(b) >= 32 && int(binary.BigEndian.Uint32(b[28:32])) >= *subs:
					// The view listing every subscriber: this one is in place.
					ready <- struct{}{}
				}
			}
		}()
	}
	deadline := time.After(*setup)
	for i := 0; i < *subs; i++ {
		select {
		case <-ready:
		case <-deadline:
			fail("subscriptions not in place within %v", *setup)
		}
	}
	c, rd, session := msgcConnect("check-pub")
	if *sndbuf > 0 {
		if err := c.(*net.TCPConn).SetWriteBuffer(*sndbuf); err != nil {
			fail("sndbuf: %v", err)
		}
	}
	go func() {
		var buf []byte
		for {
			if _, _, err := msgcFrame(rd, &buf); err != nil {
				if atomic.LoadInt32(&stop) == 0 {
					atomic.AddInt64(&disconnects, 1)
				}
				return
			}
		}
	}()
	done := make(chan struct{})
	go func() {
		defer close(done)
		payload := make([]byte, *size)
		frameLen := 28 + len(*subject) + *size
		batch := make([]byte, 0, 64*1024+frameLen+4)
		var seq uint64
		for atomic.LoadInt32(&stop) == 0 {
			batch = batch[:0]
			n := 0
			for len(batch) < 64*1024 {
				seq++
				batch = binary.BigEndian.AppendUint32(batch, uint32(frameLen))
				batch = append(batch, msgcMcast, 0, byte(len(*subject)), 0)
				batch = binary.BigEndian.AppendUint64(batch, session)
				batch = binary.BigEndian.AppendUint64(batch, seq)
				batch = binary.BigEndian.AppendUint64(batch, 0)
				batch = append(batch, *subject...)
				batch = append(batch, payload...)
				n++
			}
			if _, err := c.Write(batch); err != nil {
				return
			}
			atomic.AddUint64(&published, uint64(n))
		}
	}()
	moved, cpu := window(&delivered, &published)
	atomic.StoreInt32(&stop, 1)
	c.Close()
	<-done
	return result{
		Published:   float64(moved[1]) / *duration,
		Delivered:   float64(moved[0]) / *duration,
		Disconnects: atomic.LoadInt64(&disconnects),
		CPUPercent:  cpu,
	}
}
