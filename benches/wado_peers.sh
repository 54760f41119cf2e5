#!/bin/sh
# The peers of `cargo bench --bench wado_load`: nginx serving static files (the loopback limit)
# and Orthanc with its DICOMweb plugin, both on loopback ports with their data in one temporary
# directory. Needs the Debian packages nginx, orthanc and orthanc-dicomweb:
#   apt-get install -y nginx orthanc orthanc-dicomweb
#
#   benches/wado_peers.sh start            # starts both; prints the variables for wado_load
#   benches/wado_peers.sh restart-orthanc  # stops Orthanc, starts it again (KURA_BENCH_RESTART)
#   benches/wado_peers.sh stop             # stops both; the directory is left for inspection
#
# WADO_PEERS_DIR (default /tmp/kura-wado-peers), NGINX_PORT (8088) and ORTHANC_PORT (8043) adjust it.
set -eu

DIR=${WADO_PEERS_DIR:-/tmp/kura-wado-peers}
NGINX_PORT=${NGINX_PORT:-8088}
ORTHANC_PORT=${ORTHANC_PORT:-8043}
SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")

listening() { ss -Hltn "sport = :$1" | grep -q .; }

wait_port() {
    i=0
    until listening "$1"; do
        i=$((i + 1))
        [ "$i" -lt 600 ] || { echo "nothing listens on port $1" >&2; exit 1; }
        sleep 0.1
    done
}

start_orthanc() {
    Orthanc "$DIR/orthanc.json" >>"$DIR/orthanc.log" 2>&1 &
    echo $! >"$DIR/orthanc.pid"
    wait_port "$ORTHANC_PORT"
}

stop_pid_file() {
    [ -f "$1" ] || return 0
    pid=$(cat "$1")
    kill -TERM "$pid" 2>/dev/null || true
    i=0
    while kill -0 "$pid" 2>/dev/null; do
        i=$((i + 1))
        [ "$i" -lt 600 ] || { kill -KILL "$pid" 2>/dev/null || true; break; }
        sleep 0.1
    done
    rm -f "$1"
}

case "${1:-}" in
start)
    for port in "$NGINX_PORT" "$ORTHANC_PORT"; do
        if listening "$port"; then echo "port $port is taken" >&2; exit 1; fi
    done
    mkdir -p "$DIR/static" "$DIR/nginx-temp" "$DIR/orthanc-storage"
    chmod 755 "$DIR" "$DIR/static"
    cat >"$DIR/nginx.conf" <<EOF
worker_processes auto;
pid $DIR/nginx.pid;
error_log $DIR/nginx-error.log warn;
events { worker_connections 512; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    types { application/dicom dcm; }
    default_type application/octet-stream;
    client_body_temp_path $DIR/nginx-temp/body;
    proxy_temp_path $DIR/nginx-temp/proxy;
    fastcgi_temp_path $DIR/nginx-temp/fastcgi;
    uwsgi_temp_path $DIR/nginx-temp/uwsgi;
    scgi_temp_path $DIR/nginx-temp/scgi;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $DIR/static;
    }
}
EOF
    # The configuration of the QIDO comparison (benches/README.md), on its own port and directory.
    # Orthanc 1.10 has no HttpBindAddress: it listens on all interfaces, and RemoteAccessAllowed
    # false refuses anything but loopback.
    cat >"$DIR/orthanc.json" <<EOF
{
  "Name" : "OrthancWadoBench",
  "StorageDirectory" : "$DIR/orthanc-storage",
  "IndexDirectory" : "$DIR/orthanc-storage",
  "StorageCompression" : false,
  "Plugins" : [ "/usr/share/orthanc/plugins/libOrthancDicomWeb.so" ],
  "HttpServerEnabled" : true,
  "HttpPort" : $ORTHANC_PORT,
  "RemoteAccessAllowed" : false,
  "AuthenticationEnabled" : false,
  "DicomServerEnabled" : false,
  "OrthancExplorerEnabled" : false,
  "WebDavEnabled" : false,
  "DicomWeb" : { "Enable" : true, "Root" : "/dicom-web/", "EnableWado" : false,
                 "Host" : "127.0.0.1:$ORTHANC_PORT", "Ssl" : false }
}
EOF
    nginx -c "$DIR/nginx.conf" -g 'daemon off;' >>"$DIR/nginx.log" 2>&1 &
    echo $! >"$DIR/nginx-master.pid"
    wait_port "$NGINX_PORT"
    start_orthanc
    cat <<EOF
# nginx $(nginx -v 2>&1 | sed 's/.*\///') and Orthanc $(dpkg-query -W -f '${Version}' orthanc) + DICOMweb $(dpkg-query -W -f '${Version}' orthanc-dicomweb), data in $DIR
export KURA_BENCH_STATIC_URL=http://127.0.0.1:$NGINX_PORT KURA_BENCH_STATIC_DIR=$DIR/static KURA_BENCH_STATIC_PID=$(cat "$DIR/nginx-master.pid")
# for the Orthanc run:
export ORTHANC_URL=http://127.0.0.1:$ORTHANC_PORT/dicom-web ORTHANC_PID_FILE=$DIR/orthanc.pid ORTHANC_RESTART="$SELF restart-orthanc"
EOF
    ;;
restart-orthanc)
    stop_pid_file "$DIR/orthanc.pid"
    start_orthanc
    ;;
stop)
    stop_pid_file "$DIR/orthanc.pid"
    stop_pid_file "$DIR/nginx-master.pid"
    ;;
*)
    sed -n '2,12p' "$0" >&2
    exit 2
    ;;
esac
