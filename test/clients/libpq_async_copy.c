/*
 * An asynchronous libpq client, as psycopg's async mode drives it: PQsendQuery, then
 * PQgetCopyData(async) / PQconsumeInput / PQisBusy, waiting with select() on PQsocket
 * between reads. It runs ROUNDS COPY … TO STDOUT of varying sizes, so results end
 * anywhere within a TLS record, and checks every byte arrived.
 *
 * With libpq before 18 over TLS, a record larger than the 8 KiB libpq reads per call
 * leaves the rest inside OpenSSL, where select() cannot see it: the client then
 * waits for bytes it already has. That wait never ends (the server has sent
 * everything), so it is reported as a stall after STALL_S seconds without
 * progress, exit 3.
 *
 * build: cc -o libpq_async_copy libpq_async_copy.c -I$(pg_config --includedir) -lpq
 * usage: libpq_async_copy CONNINFO [ROUNDS [ROWS [WIDTH [PAUSE_MS]]]]
 *   each round copies ROWS to 2 × ROWS rows of WIDTH bytes and a newline (default 2000, 100); after
 *   sending the query the client waits PAUSE_MS before it reads, so the result piles up in the
 *   server's send queue (as behind a slow client)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <unistd.h>
#include <libpq-fe.h>

#define STALL_S 10

static PGconn *conn;
static int round_no;

static void fail(const char *what) {
  fprintf(stderr, "round %d: %s: %s", round_no, what, PQerrorMessage(conn));
  exit(2);
}

/* Wait until the socket is readable; a stall (nothing readable for STALL_S s) exits 3. */
static void wait_readable(const char *phase) {
  int fd = PQsocket(conn);
  fd_set rd;
  FD_ZERO(&rd);
  FD_SET(fd, &rd);
  struct timeval tv = {STALL_S, 0};
  int n = select(fd + 1, &rd, NULL, NULL, &tv);
  if (n < 0) fail("select");
  if (n == 0) {
    printf("STALL round %d: nothing readable for %d s while %s\n", round_no, STALL_S, phase);
    exit(3);
  }
  if (!PQconsumeInput(conn)) fail("PQconsumeInput");
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IONBF, 0);
  if (argc < 2) {
    fprintf(stderr, "usage: %s CONNINFO [ROUNDS]\n", argv[0]);
    return 1;
  }
  int rounds = argc > 2 ? atoi(argv[2]) : 100;
  int base = argc > 3 ? atoi(argv[3]) : 2000;
  int width = argc > 4 ? atoi(argv[4]) : 100;
  int pause_ms = argc > 5 ? atoi(argv[5]) : 0;
  conn = PQconnectdb(argv[1]);
  if (PQstatus(conn) != CONNECTION_OK) fail("connect");
  if (PQsetnonblocking(conn, 1) != 0) fail("PQsetnonblocking");
  printf("libpq %d ssl %s\n", PQlibVersion(), PQsslInUse(conn) ? "on" : "off");
  long long total = 0;
  for (round_no = 1; round_no <= rounds; round_no++) {
    /* A different count each round, so results end anywhere within a record. */
    int rows = base + (int)(((long long)round_no * 7919) % base);
    char sql[200];
    snprintf(sql, sizeof sql, "COPY (SELECT repeat('x', %d) FROM generate_series(1, %d)) TO STDOUT", width, rows);
    if (!PQsendQuery(conn, sql)) fail("PQsendQuery");
    while (PQflush(conn) == 1) wait_readable("sending the query");
    if (pause_ms > 0) usleep(pause_ms * 1000);
    /* The COPY's start: a PGRES_COPY_OUT result. */
    while (PQisBusy(conn)) wait_readable("waiting for CopyOutResponse");
    PGresult *r = PQgetResult(conn);
    if (PQresultStatus(r) != PGRES_COPY_OUT) fail("expected COPY OUT");
    PQclear(r);
    long long bytes = 0;
    for (;;) {
      char *buf;
      int n = PQgetCopyData(conn, &buf, 1);
      if (n > 0) {
        bytes += n;
        PQfreemem(buf);
        continue;
      }
      if (n == -1) break;
      if (n == -2) fail("PQgetCopyData");
      wait_readable("reading COPY data");
    }
    if (bytes != (long long)rows * (width + 1)) {
      printf("SHORT round %d: %lld bytes, want %lld\n", round_no, bytes, (long long)rows * (width + 1));
      return 4;
    }
    for (;;) {
      while (PQisBusy(conn)) wait_readable("waiting for the end of the COPY");
      r = PQgetResult(conn);
      if (r == NULL) break;
      if (PQresultStatus(r) != PGRES_COMMAND_OK) fail("COPY result");
      PQclear(r);
    }
    total += bytes;
  }
  printf("OK %d rounds, %lld bytes\n", rounds, total);
  PQfinish(conn);
  return 0;
}
