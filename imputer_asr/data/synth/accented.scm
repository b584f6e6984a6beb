;; English read by festival's voices of other languages: the English front end (kal_diphone) gives
;; the phones, their durations and the F0 targets; each phone becomes the nearest phone(s) of the
;; voice's language, and the voice's own diphones speak them (festival's Segments utterance type).
;; The result is English with the voice's accent and the timbre of a speaker no English voice has.
;; Loaded by imputer_asr/data/synth/voices.py, which calls accented_say.

;; English (radio phone set) -> the voice's phones; two phones share the English phone's time.
(set! accented_italian
  '((aa "a") (ae "E") (ah "a") (ao "O") (ax "e") (axr "e r") (aw "a u") (ay "a j") (eh "E")
    (er "e r") (ey "e j") (ih "i") (iy "i") (ow "o u") (oy "O j") (uh "u") (uw "u")
    (b "b") (ch "tS") (d "d") (dh "d") (dx "d") (el "l") (em "m") (en "n") (f "f") (g "g")
    (hh "#") (hv "#") (jh "dZ") (k "k") (l "l") (m "m") (n "n") (nx "n") (ng "n g") (p "p")
    (r "r") (s "s") (sh "S") (t "t") (th "t") (v "v") (w "w") (y "j") (z "z") (zh "Z")
    (pau "#") (h# "#") (brth "#")))
(set! accented_finnish
  '((aa "a:") (ae "@") (ah "a") (ao "o") (ax "e") (axr "e r") (aw "a u") (ay "a i") (eh "e")
    (er "7 r") (ey "e i") (ih "i") (iy "i:") (ow "o u") (oy "o i") (uh "u") (uw "u:")
    (b "b") (ch "t S") (d "d") (dh "d") (dx "d") (el "l") (em "m") (en "n") (f "f") (g "g")
    (hh "h") (hv "h") (jh "d S") (k "k") (l "l") (m "m") (n "n") (nx "n") (ng "N") (p "p")
    (r "r") (s "s") (sh "S") (t "t") (th "T") (v "v") (w "v") (y "j") (z "s") (zh "S")
    (pau "#") (h# "#") (brth "#")))
(set! accented_czech
  '((aa "a:") (ae "e") (ah "a") (ao "o:") (ax "e") (axr "e r") (aw "a u") (ay "a j") (eh "e")
    (er "e r") (ey "e j") (ih "i") (iy "i:") (ow "o u") (oy "o j") (uh "u") (uw "u:")
    (b "b") (ch "c~") (d "d") (dh "d") (dx "d") (el "l") (em "m") (en "n") (f "f") (g "g")
    (hh "h") (hv "h") (jh "dz~") (k "k") (l "l") (m "m") (n "n") (nx "n") (ng "n") (p "p")
    (r "r") (s "s") (sh "s~") (t "t") (th "t") (v "v") (w "v") (y "j") (z "z") (zh "z~")
    (pau "#") (h# "#") (brth "#")))

(define (accented_split names dur targets)
  "The (name dur (pos f0)...) segments of NAMES sharing DUR; each target goes to the part it falls in."
  (let ((n (length names)) (i 0) (out nil))
    (mapcar
     (lambda (name)
       (let ((lo (* i (/ dur n))) (hi (* (+ i 1) (/ dur n))))
         (set! out
               (cons (cons name
                           (cons (/ dur n)
                                 (apply append
                                        (mapcar (lambda (tg)
                                                  (if (and (>= (car tg) lo)
                                                           (or (< (car tg) hi) (equal? (+ i 1) n)))
                                                      (list (list (- (car tg) lo) (cadr tg)))))
                                                targets))))
                     out))
         (set! i (+ i 1))))
     names)
    (reverse out)))

(define (accented_segments utt table f0_scale dur_scale)
  "UTT's segments in TABLE's phones, durations times DUR_SCALE, F0 times F0_SCALE."
  (apply append
   (mapcar
    (lambda (seg)
      (let ((start (item.feat seg "segment_start")) (mapped (assoc_string (item.name seg) table)))
        (if (not mapped) (error (string-append "accented: no phone for " (item.name seg))))
        (accented_split
         (read-from-string (string-append "(" (cadr mapped) ")"))
         (* dur_scale (- (item.feat seg "end") start))
         (mapcar (lambda (tg) (list (* dur_scale (- (item.feat tg "pos") start))
                                    (* f0_scale (item.feat tg "f0"))))
                 (item.relation.daughters seg 'Target)))))
    (utt.relation.items utt 'Segment))))

(define (accented_say text voice table f0_scale dur_scale wavfile)
  "Speak TEXT with VOICE through the phone TABLE into the RIFF file WAVFILE."
  (voice_kal_diphone)
  (set! accented_english (utt.synth (eval (list 'Utterance 'Text text))))
  (set! accented_segs (accented_segments accented_english table f0_scale dur_scale))
  (eval (list (intern (string-append "voice_" voice))))
  (set! accented_utt (utt.synth (eval (list 'Utterance 'Segments accented_segs))))
  (utt.save.wave accented_utt wavfile 'riff))
