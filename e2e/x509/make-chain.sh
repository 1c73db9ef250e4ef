#!/usr/bin/env bash
# Writes a test PKI into DIR with openssl: root CA -> intermediate CA -> code-signing leaf (ECDSA
# P-256, SAN email release-signer@sluice.dev), the leaf's key as PKCS#8 (leaf.key) and SEC1
# (leaf-sec1.key), chain.pem (intermediate then root), and an expired leaf (expired.pem) for the
# same key. Test material only: every key is generated fresh and lives in DIR.
#   usage: e2e/x509/make-chain.sh DIR [DAYS]
set -euo pipefail
dir=${1:?usage: make-chain.sh DIR [DAYS]}
days=${2:-3650}
mkdir -p "$dir"
cd "$dir"
ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
cat > ext.cnf <<'CNF'
[req]
distinguished_name = dn
[dn]
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[leaf_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = codeSigning
subjectAltName = email:release-signer@sluice.dev
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
CNF
ec root.key
openssl req -x509 -new -key root.key -sha256 -days "$days" -subj "/O=Sluice e2e/CN=Sluice e2e root" \
  -extensions ca_ext -config ext.cnf -out root.pem
ec intermediate.key
openssl req -new -config ext.cnf -key intermediate.key -subj "/O=Sluice e2e/CN=Sluice e2e intermediate" -out intermediate.csr
openssl x509 -req -in intermediate.csr -CA root.pem -CAkey root.key -CAcreateserial -sha256 -days "$days" \
  -extfile ext.cnf -extensions ca_ext -out intermediate.pem 2>/dev/null
ec leaf.key
openssl ec -in leaf.key -out leaf-sec1.key 2>/dev/null
openssl req -new -config ext.cnf -key leaf.key -subj "/O=Sluice e2e/CN=release signer" -out leaf.csr
openssl x509 -req -in leaf.csr -CA intermediate.pem -CAkey intermediate.key -CAcreateserial -sha256 \
  -days "$days" -extfile ext.cnf -extensions leaf_ext -out leaf.pem 2>/dev/null
cat intermediate.pem root.pem > chain.pem
# Expired: valid for one day two years ago (openssl ca takes explicit dates; x509 -req does not).
mkdir -p ca/newcerts && : > ca/index.txt && echo 1000 > ca/serial
cat > ca.cnf <<CNF
[ca]
default_ca = e2e
[e2e]
dir = ca
database = ca/index.txt
new_certs_dir = ca/newcerts
serial = ca/serial
default_md = sha256
policy = any
copy_extensions = none
[any]
commonName = supplied
organizationName = optional
CNF
start=$(date -u -d '2 years ago' +%Y%m%d%H%M%SZ)
end=$(date -u -d '2 years ago + 1 day' +%Y%m%d%H%M%SZ)
openssl ca -batch -config ca.cnf -cert intermediate.pem -keyfile intermediate.key -in leaf.csr \
  -startdate "$start" -enddate "$end" -extfile ext.cnf -extensions leaf_ext -notext -out expired.pem 2>/dev/null
rm -rf ca ca.cnf ./*.csr ./*.srl ext.cnf root.key intermediate.key
