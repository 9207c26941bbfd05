/* tcp_listener STATEDIR - a TCP listener on 127.0.0.1 whose port it
 * writes to <statedir>/port before ready (the harness connects to it).
 *
 * After SIGTERM it accepts one connection within 10 s, reads "ping" from
 * it and answers "pong": the listener must have come back listening on
 * the same port, and the connection it takes must be one made after the
 * restore (one left waiting at the dump with --skip-in-flight is gone). */
#include "wl.h"

#include <arpa/inet.h>
#include <netinet/in.h>

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	wl_block_term();
	int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t al = sizeof(a);
	if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(l, 8) < 0 ||
	    getsockname(l, (struct sockaddr *)&a, &al) < 0)
		wl_fail("listen on 127.0.0.1: %s", strerror(errno));
	char port[16];
	int n = snprintf(port, sizeof(port), "%d\n", ntohs(a.sin_port));
	if (wl_write_file("port", port, (size_t)n) < 0)
		wl_fail("write the port: %s", strerror(errno));

	wl_ready();
	wl_wait_term();

	struct pollfd pf = {.fd = l, .events = POLLIN};
	if (poll(&pf, 1, 10000) != 1)
		wl_fail("no connection came to the listener after the restore");
	int c = wl_accept(l, "accept");
	char buf[8] = {0};
	if (wl_read_wait(c, buf, 4, 10000) != 4 || memcmp(buf, "ping", 4))
		wl_fail("the connection said %.4s, not ping (one left behind at the dump?)", buf);
	if (write(c, "pong", 4) != 4)
		wl_fail("answer pong: %s", strerror(errno));
	wl_pass();
}
