# CPU the server spends to serve a whole study in each lossless syntax, cold and from the
# encoded-frame cache (benches/README.md, "CPU per served study"). Needs /tmp/ct300 from
# benches/make_ct_study.py and KURA_BIN (default target/release/kura).
import glob, os, subprocess, time, httpx, pydicom, tempfile
BIN=os.environ.get("KURA_BIN", "target/release/kura"); d=tempfile.mkdtemp(); port=18611
srv=subprocess.Popen([BIN,"serve","--listen",f"127.0.0.1:{port}","--data",d,"--no-precompute-renditions"],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)
time.sleep(2)
root=f"http://127.0.0.1:{port}/dicomweb"
files=sorted(glob.glob("/tmp/ct300/*.dcm")); study=pydicom.dcmread(files[0]).StudyInstanceUID
c=httpx.Client(timeout=600)
for i in range(0,300,30):
    body=b"".join(b"--xx\r\nContent-Type: application/dicom\r\n\r\n"+open(f,"rb").read()+b"\r\n" for f in files[i:i+30])+b"--xx--\r\n"
    r=c.post(root+"/studies",content=body,headers={"content-type":'multipart/related; type="application/dicom"; boundary=xx'}); assert r.status_code==200, r.status_code
def cpu():
    f=open(f"/proc/{srv.pid}/stat").read().rsplit(")",1)[1].split(); return (int(f[11])+int(f[12]))/100
TS={"JPEG-LS":"1.2.840.10008.1.2.4.80","HTJ2K":"1.2.840.10008.1.2.4.201","JPEG XL":"1.2.840.10008.1.2.4.110","JPEG 2000":"1.2.840.10008.1.2.4.90","native":"1.2.840.10008.1.2.1"}
for name,ts in TS.items():
    for attempt in ("cold","cached"):
        c0=cpu(); t0=time.monotonic()
        r=c.get(f"{root}/studies/{study}",headers={"accept":f'multipart/related; type="application/dicom"; transfer-syntax={ts}'})
        print(f"{name:9} {attempt:6} status {r.status_code} {len(r.content)/1e6:7.1f} MB  server CPU {cpu()-c0:6.2f} s  wall {time.monotonic()-t0:6.2f} s", flush=True)
srv.terminate(); srv.wait(); subprocess.run(["rm","-rf",d])
