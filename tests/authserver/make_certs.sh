#!/bin/sh
# make_certs.sh OUTDIR — test PKI for the HTTPS integration tests:
#   ca.pem/ca.key          a CA
#   server.pem/server.key  a leaf for 127.0.0.1 (SAN IP:127.0.0.1, IP:::1,
#                          DNS:localhost) signed by that CA
#   other_ca.pem/.key      an unrelated CA (for the wrong-CA test)
# Quiet on success; keys are EC P-256 so this takes well under a second.
set -eu
if [ $# -ne 1 ]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
command -v openssl >/dev/null 2>&1 || { echo "$0: openssl not found" >&2; exit 1; }
out=$1
mkdir -p "$out"
cd "$out"
umask 077
log=$(mktemp)
trap 'rm -f "$log" server.csr server.ext ca.srl' EXIT
run() { "$@" >>"$log" 2>&1 || { cat "$log" >&2; echo "$0: failed: $*" >&2; exit 1; }; }

newkey() { run openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }

newkey ca.key
run openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=tokenshm test CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out ca.pem

newkey other_ca.key
run openssl req -x509 -new -key other_ca.key -sha256 -days 3650 -subj "/CN=tokenshm unrelated CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out other_ca.pem

newkey server.key
run openssl req -new -key server.key -subj "/CN=127.0.0.1" -out server.csr
cat > server.ext <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost
EXT
run openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 -sha256 \
  -extfile server.ext -out server.pem
chmod 644 ca.pem other_ca.pem server.pem
